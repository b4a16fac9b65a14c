//! Instructions the accept path spends on a number: parsing to E.164 and the number-type
//! check (issue 17), for `valgrind --tool=callgrind` (counts instructions, whatever the machine's load).
//!
//! `cargo bench --bench phone -- N`: warms up, then parses N numbers of the accept bench's
//! form ("+9198" and eight digits). Run it with N and with 0 under callgrind; the difference
//! over N is the cost per number.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code

use phonenumber::country::Id;

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    otpgate::phone::warm_up(Id::IN);
    // What the accept path asks: the shipped `policy.number_types`.
    let allowed = otpgate::phone::NumberType::DEFAULT_ALLOWED;
    let mut valid = 0u64;
    for i in 0..n {
        let to = format!("+9198{:08}", i % 100_000_000);
        if let Ok(number) = otpgate::phone::parse(&to, Id::IN) {
            let number = std::hint::black_box(number);
            valid += u64::from(allowed.contains(&number.kind) && !number.e164.is_empty());
        }
    }
    println!("{valid} of {n} numbers valid and of an allowed type");
}
