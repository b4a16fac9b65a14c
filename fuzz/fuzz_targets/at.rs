//! The modem's byte stream: the line reader cut at arbitrary chunk boundaries, the dialogue
//! state machine with a pending command, and every information-line parser. Nothing may panic,
//! and the reader's buffer stays bounded however long a line without an end is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otpgate::channel::sms::at::{self, AtToken, Dialogue, LineReader, MAX_LINE};

/// Commands the modem owner really sends; the first input byte picks one (or none).
const COMMANDS: &[&str] = &[
    "AT",
    "ATE0",
    "AT+CMEE=1",
    "AT+CPIN?",
    "AT+CREG?",
    "AT+CSQ",
    "AT+COPS?",
    "AT+CSCA?",
    "AT+CMGF=0",
    "AT+CNMI=2,1,0,1,0",
    "AT+CMGS=23",
    "AT+CNMA",
    "AT+CGSN",
];

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let mut dialogue = Dialogue::new();
    let mut reader = LineReader::new();
    if let Some(cmd) = COMMANDS.get(usize::from(head >> 4)) {
        dialogue.begin(cmd);
    }
    // Low bits of the head byte: the read size, as a serial port hands out arbitrary chunks.
    let chunk = usize::from(head & 0x0F) + 1;
    for piece in rest.chunks(chunk) {
        reader.expect_prompt(dialogue.expects_prompt());
        reader.push(piece);
        while let Some(token) = reader.next() {
            if let AtToken::Line(line) = &token {
                lines(line);
            }
            for event in dialogue.feed(token) {
                if let at::Event::Final(_) = event {
                    // The next command starts once one ends, as the owner does.
                    dialogue.begin("AT+CSQ");
                }
            }
        }
        assert!(
            reader.pending_len() <= MAX_LINE + 1,
            "reader buffer grew unbounded"
        );
    }
});

/// Every line parser on one line: none may panic on any text.
fn lines(line: &str) {
    let _ = at::classify(line);
    let _ = at::classify_in(line, Some("AT+CMGS=23"));
    let _ = at::parse_creg(line);
    if let Some(s) = at::parse_csq(line) {
        let _ = s.dbm();
        let _ = s.bars();
    }
    let _ = at::parse_cpin(line);
    let _ = at::parse_cmgs(line);
    let _ = at::parse_cops(line);
    let _ = at::parse_csca(line);
    let _ = at::parse_cds_len(line);
    let _ = at::parse_stored_index(line);
}
