//! `otpgate modem probe`: open a device, ask the modem who and how it is, close it again.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ModemError;
use super::port::{Conn, Final, LinkError, reg_stat, reg_word};
use crate::channel::sms::at::{PinState, parse_cops, parse_cpin, parse_csca, parse_csq};

/// What `otpgate modem probe` found out about a modem.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// The device probed.
    pub device: PathBuf,
    /// AT+CGMI.
    pub manufacturer: Option<String>,
    /// AT+CGMM.
    pub model: Option<String>,
    /// AT+CGMR.
    pub firmware: Option<String>,
    /// AT+CGSN.
    pub imei: Option<String>,
    /// AT+CPIN? ("READY", "SIM PIN", "no SIM"...).
    pub sim: String,
    /// AT+CREG?/AT+CEREG? in words.
    pub registration: String,
    /// AT+COPS?.
    pub operator: Option<String>,
    /// AT+CSQ in dBm.
    pub signal_dbm: Option<i32>,
    /// AT+CSQ in bars (0-4).
    pub signal_bars: Option<u8>,
    /// AT+CSCA?.
    pub smsc: Option<String>,
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        writeln!(f, "device:       {}", self.device.display())?;
        writeln!(
            f,
            "modem:        {} {} (firmware {})",
            o(&self.manufacturer),
            o(&self.model),
            o(&self.firmware)
        )?;
        writeln!(f, "IMEI:         {}", o(&self.imei))?;
        writeln!(f, "SIM:          {}", self.sim)?;
        writeln!(f, "registration: {}", self.registration)?;
        writeln!(f, "operator:     {}", o(&self.operator))?;
        match (self.signal_dbm, self.signal_bars) {
            (Some(d), Some(b)) => writeln!(f, "signal:       {d} dBm ({b}/4 bars)")?,
            _ => writeln!(f, "signal:       unknown")?,
        }
        write!(
            f,
            "SMSC:         {}",
            self.smsc
                .clone()
                .unwrap_or_else(|| "none on the SIM (set smsc in the config)".into())
        )
    }
}

/// Opens `device`, asks the modem who and how it is, and closes it again. Enters no PIN.
pub async fn probe(device: &Path, baud: u32, timeout: Duration) -> Result<ProbeReport, ModemError> {
    let mut conn = Conn::open(device, baud)?;
    let lost = |e: LinkError, device: &Path| match e {
        LinkError::Lost(e) => ModemError::Io(device.to_path_buf(), e),
        LinkError::Timeout => ModemError::NoAnswer(device.to_path_buf(), timeout),
    };
    conn.escape().await.map_err(|e| lost(e, device))?;
    let mut alive = false;
    for _ in 0..3 {
        match conn.command("AT", timeout).await {
            Ok(r) if r.ok() => {
                alive = true;
                break;
            }
            Ok(_) | Err(LinkError::Timeout) => {}
            Err(e) => return Err(lost(e, device)),
        }
    }
    if !alive {
        return Err(ModemError::NoAnswer(device.to_path_buf(), timeout));
    }
    // A late answer to the ESC line would otherwise shift every answer below by one.
    conn.sync(timeout).await.map_err(|e| lost(e, device))?;
    let mut ask = async |cmd: &str| {
        conn.command(cmd, timeout)
            .await
            .map_err(|e| lost(e, device))
    };
    ask("ATE0").await?;
    ask("AT+CMEE=1").await?;
    let manufacturer = ask("AT+CGMI").await?.value();
    let model = ask("AT+CGMM").await?.value();
    let firmware = ask("AT+CGMR").await?.value();
    let imei = ask("AT+CGSN").await?.value();
    let cpin = ask("AT+CPIN?").await?;
    let sim = match (&cpin.fin, cpin.parse(parse_cpin)) {
        (Final::Ok, Some(PinState::Ready)) => "READY".to_string(),
        (Final::Ok, Some(PinState::SimPin)) => "SIM PIN (a PIN is needed)".to_string(),
        (Final::Ok, Some(PinState::SimPuk)) => "SIM PUK (locked)".to_string(),
        (Final::Ok, Some(other)) => format!("{other:?}"),
        (Final::Cme(Some(10)), _) => "no SIM inserted".to_string(),
        (fin, _) => format!("unknown ({fin})"),
    };
    let stat = reg_stat(&ask("AT+CREG?").await?);
    let estat = reg_stat(&ask("AT+CEREG?").await?);
    let best = [stat, estat]
        .into_iter()
        .flatten()
        .find(|r| r.is_usable())
        .or(stat)
        .or(estat);
    let operator = ask("AT+COPS?").await?.parse(parse_cops);
    let signal = ask("AT+CSQ").await?.parse(parse_csq);
    let smsc = ask("AT+CSCA?").await?.parse(parse_csca);
    Ok(ProbeReport {
        device: device.to_path_buf(),
        manufacturer,
        model,
        firmware,
        imei,
        sim,
        registration: reg_word(best),
        operator,
        signal_dbm: signal.and_then(|g| g.dbm()),
        signal_bars: signal.filter(|g| g.dbm().is_some()).map(|g| g.bars()),
        smsc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_report_prints_a_few_lines() {
        let r = ProbeReport {
            device: "/dev/ttyUSB2".into(),
            manufacturer: Some("Quectel".into()),
            sim: "READY".into(),
            registration: "registered, roaming".into(),
            signal_dbm: Some(-71),
            signal_bars: Some(4),
            ..ProbeReport::default()
        };
        let text = r.to_string();
        assert!(text.contains("-71 dBm (4/4 bars)"));
        assert!(text.contains("none on the SIM"));
        assert_eq!(text.lines().count(), 8);
    }

    #[test]
    fn every_error_names_the_device_once() {
        // `modem probe` prints the error alone: the path must be in it, and only once.
        let p = || PathBuf::from("/dev/ttyUSB2");
        let errors = [
            ModemError::PermissionDenied(p()),
            ModemError::Busy(p()),
            ModemError::NotFound(p()),
            ModemError::NoAnswer(p(), Duration::from_secs(2)),
            ModemError::Open(p(), "bad".into()),
            ModemError::Io(p(), std::io::Error::other("hang-up")),
        ];
        for e in errors {
            assert_eq!(e.to_string().matches("/dev/ttyUSB2").count(), 1, "{e}");
        }
    }
}
