//! The owner's send path: encode the PDUs, AT+CMGS and its `> ` prompt, the hand-over of each
//! part, and what the modem's answer, or its silence, means for the message and for the modem's
//! state (a PDU left unanswered past `command_timeout` takes the modem out of the pool until it
//! answers again).

use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use super::{After, MAX_TRACKED, Owner, Tracked, permanent};
use crate::channel::sms::at::{
    CmsClass, Event, FinalResult, classify_cme, classify_cms, parse_cmgs,
};
use crate::channel::sms::modem::port::{Conn, Final, LinkError, cms_reason};
use crate::channel::sms::modem::{Claim, ModemState, SendJob, SendResult, lock};
use crate::channel::sms::pdu;

impl Owner {
    pub(super) async fn send(
        &mut self,
        conn: &mut Conn,
        job: &SendJob,
        claim: &Claim,
    ) -> (SendResult, After) {
        let opts = pdu::SubmitOptions {
            now: self.clock.now(),
            expires_at: job.expires_at,
            status_report: self.cfg.status_reports,
            smsc: self.cfg.smsc.clone(),
            concat_ref: self.concat_ref,
        };
        self.concat_ref = self.concat_ref.wrapping_add(1);
        let parts = match pdu::encode_submit(&job.to, &job.text, &opts) {
            Ok(p) if !p.is_empty() => p,
            // PduError's messages name only the kind of fault, never the text.
            Ok(_) => {
                return (
                    permanent("cannot encode the SMS: no parts".into()),
                    After::Nothing,
                );
            }
            Err(e) => {
                return (
                    permanent(format!("cannot encode the SMS: {e}")),
                    After::Nothing,
                );
            }
        };
        let total = parts.len();
        debug!(modem = %self.name, message_id = %job.message_id, parts = total, "sending SMS");
        let mut mrs = Vec::with_capacity(total);
        for (i, part) in parts.iter().enumerate() {
            match self.send_part(conn, job, claim, part, i, total).await {
                Ok(mr) => mrs.push(mr),
                Err(fail) => return fail,
            }
        }
        let last = mrs.last().copied().unwrap_or(0);
        let provider_id = format!("{}/{}", self.name, last);
        if self.cfg.status_reports {
            if self.tracked.len() >= MAX_TRACKED {
                self.tracked.pop_front();
            }
            self.tracked.push_back(Tracked {
                provider_id: provider_id.clone(),
                to: job.to.clone(),
                pending: mrs,
                at: Instant::now(),
            });
        }
        debug!(modem = %self.name, message_id = %job.message_id, provider_id = %provider_id, "SMS accepted");
        (SendResult::Accepted { provider_id }, After::Nothing)
    }

    async fn send_part(
        &mut self,
        conn: &mut Conn,
        job: &SendJob,
        claim: &Claim,
        part: &pdu::SubmitPdu,
        i: usize,
        total: usize,
    ) -> Result<u8, (SendResult, After)> {
        self.await_prompt(conn, job, part, i, total).await?;
        if i == 0 && !claim.hand_over() {
            // The handle withdrew the job (its share of the time ran out) and has already
            // answered Transient; the message must not leave now.
            debug!(modem = %self.name, message_id = %job.message_id, "prompt came after the job was withdrawn");
            let reason = format!("{}: withdrawn before the hand-over", self.name);
            return Err((
                SendResult::Transient { code: None, reason },
                self.close_prompt(conn).await,
            ));
        }
        if i == 0 {
            // The departure is recorded only now, at the prompt, so a crash while the job
            // waited in the queue leaves nothing that says it may have gone out. The prompt
            // waits for it: one store commit, bounded like any other exchange.
            let by = (Instant::now() + self.cfg.command_timeout).min(job.deadline);
            let departed = match tokio::time::timeout_at(by, job.departure.depart()).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("recording the departure took too long".to_owned()),
            };
            if let Err(why) = departed {
                warn!(modem = %self.name, message_id = %job.message_id, reason = %why, "SMS not handed over: departure refused");
                let reason = format!("{}: not sent: {why}", self.name);
                return Err((
                    SendResult::Transient { code: None, reason },
                    self.close_prompt(conn).await,
                ));
            }
        }
        self.hand_over(conn, job, part, i, total).await
    }

    /// Closes a `> ` prompt unsent (ESC), and gets back in step in case the modem answers the
    /// ESC line.
    async fn close_prompt(&mut self, conn: &mut Conn) -> After {
        match conn.escape().await {
            Ok(()) => match conn.sync(self.cfg.command_timeout).await {
                Ok(_) => After::Nothing,
                Err(LinkError::Timeout) => After::Recover,
                Err(LinkError::Lost(_)) => After::Lost,
            },
            Err(LinkError::Timeout) => After::Recover,
            Err(LinkError::Lost(_)) => After::Lost,
        }
    }

    /// AT+CMGS and its `> ` prompt. Nothing has gone out yet, so every failure here is safe to
    /// try again elsewhere.
    async fn await_prompt(
        &mut self,
        conn: &mut Conn,
        job: &SendJob,
        part: &pdu::SubmitPdu,
        i: usize,
        total: usize,
    ) -> Result<(), (SendResult, After)> {
        let name = self.name.clone();
        let lost = |when: &str| {
            (
                SendResult::Transient {
                    code: None,
                    reason: format!("{name}: port lost {when}"),
                },
                After::Lost,
            )
        };
        // The first part must be taken by `take_by`, or the handle moves the message on.
        let take_by = if i == 0 { job.take_by } else { job.deadline };
        let prompt_deadline = (Instant::now() + self.cfg.command_timeout).min(take_by);
        let cmd = format!("AT+CMGS={}", part.tpdu_len);
        trace!(command = "AT+CMGS", octets = part.tpdu_len, "AT");
        conn.begin(&cmd);
        match conn
            .write_all(format!("{cmd}\r").as_bytes(), prompt_deadline)
            .await
        {
            Ok(()) => {}
            Err(LinkError::Lost(_)) => return Err(lost("before sending")),
            Err(LinkError::Timeout) => return Err(self.no_prompt(conn, i, total).await),
        }
        loop {
            match conn.next_event(prompt_deadline).await {
                Ok(Event::Prompt) => return Ok(()),
                Ok(Event::Final(fin)) => return Err(self.refused(&fin.into(), i, total)),
                Ok(_) => {}
                Err(LinkError::Lost(_)) => return Err(lost("before sending")),
                Err(LinkError::Timeout) => return Err(self.no_prompt(conn, i, total).await),
            }
        }
    }

    /// Writes the PDU and Ctrl-Z, then waits for +CMGS: the message's reference.
    async fn hand_over(
        &mut self,
        conn: &mut Conn,
        job: &SendJob,
        part: &pdu::SubmitPdu,
        i: usize,
        total: usize,
    ) -> Result<u8, (SendResult, After)> {
        // From here the message may leave: any doubt is Unknown, never a resend.
        let name = self.name.clone();
        let unknown = |why: String| SendResult::Unknown {
            reason: format!("{name}: {why} after part {}/{total} was handed over", i + 1),
        };
        let hand_over = (Instant::now() + self.cfg.command_timeout).min(job.deadline);
        let mut bytes = Vec::with_capacity(part.hex.len() + 1);
        bytes.extend_from_slice(part.hex.as_bytes());
        bytes.push(0x1a);
        match conn.write_all(&bytes, hand_over).await {
            Ok(()) => {}
            Err(LinkError::Lost(_)) => return Err((unknown("port lost".into()), After::Lost)),
            Err(LinkError::Timeout) => {
                return Err((unknown("write timed out".into()), After::Recover));
            }
        }
        // The handle answers Unknown at the deadline: waiting longer would tell no one.
        let answer_deadline = (Instant::now() + self.cfg.send_timeout).min(job.deadline);
        // A modem that took a PDU answers within seconds on a working network. Past
        // command_timeout it counts as not answering for /readyz and the pool, which then
        // routes the next message elsewhere, while this send still waits for a late answer.
        let mut answer_due = Some((Instant::now() + self.cfg.command_timeout).min(answer_deadline));
        let mut overdue = false;
        let mut mr = None;
        loop {
            let event = conn.next_event(answer_due.unwrap_or(answer_deadline)).await;
            if answer_due.is_some() && matches!(event, Err(LinkError::Timeout)) {
                answer_due = None;
                overdue = self.answer_overdue(job, i, total);
                continue;
            }
            if overdue && matches!(event, Ok(Event::Info(_) | Event::Final(_))) {
                overdue = false;
                self.answered_again();
            }
            match event {
                Ok(Event::Info(l)) => {
                    if let Some(m) = parse_cmgs(&l) {
                        mr = Some(m);
                    }
                }
                Ok(Event::Final(FinalResult::Ok)) => match mr {
                    Some(mr) => return Ok(mr),
                    None => {
                        return Err((
                            unknown("OK without a message reference".into()),
                            After::Nothing,
                        ));
                    }
                },
                Ok(Event::Final(fin)) => return Err(self.refused(&fin.into(), i, total)),
                Ok(_) => {}
                Err(LinkError::Lost(_)) => return Err((unknown("port lost".into()), After::Lost)),
                Err(LinkError::Timeout) => {
                    conn.abandon();
                    warn!(modem = %name, message_id = %job.message_id, part = i + 1, total, "no +CMGS after Ctrl-Z: outcome unknown");
                    return Err((unknown("no answer".into()), After::Recover));
                }
            }
        }
    }

    /// No answer to a PDU by its due time: the modem is not `ready` until it answers again.
    /// True when that changed its state.
    fn answer_overdue(&self, job: &SendJob, i: usize, total: usize) -> bool {
        if self.state() != ModemState::Ready {
            return false;
        }
        warn!(modem = %self.name, message_id = %job.message_id, part = i + 1, total, "no answer to the PDU yet; modem out of the pool until it answers");
        let detail = format!("no answer to a PDU within {:?}", self.cfg.command_timeout);
        self.set_state(ModemState::NoAnswer, detail);
        true
    }

    /// A late answer to a PDU after [`Self::answer_overdue`]: the modem is back. (Only this
    /// task writes the state, so it is still the `no_answer` set there.)
    fn answered_again(&self) {
        info!(modem = %self.name, "late answer to the PDU; modem back in the pool");
        let op = lock(&self.status).operator.clone().unwrap_or_default();
        self.set_state(ModemState::Ready, op);
    }

    async fn no_prompt(&mut self, conn: &mut Conn, i: usize, total: usize) -> (SendResult, After) {
        let _ = conn.escape().await;
        warn!(modem = %self.name, part = i + 1, total, "no prompt for AT+CMGS");
        (
            SendResult::Transient {
                code: None,
                reason: format!("{}: no '>' prompt from the modem", self.name),
            },
            After::Recover,
        )
    }

    fn refused(&self, fin: &Final, i: usize, total: usize) -> (SendResult, After) {
        let code = Some(fin.to_string());
        let name = &self.name;
        warn!(modem = %name, part = i + 1, total, result = %fin, "send refused");
        match fin {
            Final::Cms(Some(n)) => {
                let reason = format!("{name}: {}", cms_reason(*n));
                match classify_cms(*n) {
                    CmsClass::Transient => (SendResult::Transient { code, reason }, After::Nothing),
                    CmsClass::PermanentForNumber => {
                        (SendResult::Permanent { code, reason }, After::Nothing)
                    }
                    CmsClass::ModemProblem => (
                        SendResult::Sick {
                            code: code.clone(),
                            reason: reason.clone(),
                        },
                        After::Sick(format!("{} ({})", reason, fin)),
                    ),
                }
            }
            // 515 busy and similar: wait and retry; SIM trouble takes the modem out.
            Final::Cme(Some(n)) => match classify_cme(*n) {
                CmsClass::ModemProblem => (
                    SendResult::Sick {
                        code,
                        reason: format!("{name}: SIM or modem problem"),
                    },
                    After::Sick(format!("AT+CMGS refused ({fin})")),
                ),
                _ => (
                    SendResult::Transient {
                        code,
                        reason: format!("{name}: modem busy"),
                    },
                    After::Nothing,
                ),
            },
            // A plain ERROR usually means the modem lost its settings (an unnoticed reboot).
            _ => (
                SendResult::Sick {
                    code,
                    reason: format!("{name}: modem refused AT+CMGS"),
                },
                After::Reinit,
            ),
        }
    }
}
