//! The GSM 7-bit default alphabet and its extension table (3GPP TS 23.038 6.2.1), and the
//! LSB-first septet packing SMS user data uses (23.038 6.1.2.1).
//!
//! Septets are kept unpacked (one value 0..=127 per byte) until the last moment, so that
//! counting, splitting into parts and escape handling work on plain slices.

/// The escape septet that switches the next septet to the extension table.
pub const ESC: u8 = 0x1B;

/// Default alphabet, indexed by septet value. 0x1B (escape) has no character of its own; the
/// placeholder is never produced by [`encode`] and never emitted by [`decode`].
const BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1B}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// Extension table entries (septet after ESC, character).
const EXTENSION: [(u8, char); 10] = [
    (0x0A, '\u{0C}'), // form feed (page break)
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

/// The septet(s) for one character: `[value]` or `[ESC, value]`; None if not representable.
fn char_septets(c: char) -> Option<([u8; 2], usize)> {
    if c != '\u{1B}' {
        if let Some(i) = BASIC.iter().position(|&b| b == c) {
            return Some(([i as u8, 0], 1));
        }
    }
    EXTENSION
        .iter()
        .find(|&&(_, e)| e == c)
        .map(|&(v, _)| ([ESC, v], 2))
}

/// Whether one character can be sent in GSM 7-bit (default alphabet or extension table).
pub fn is_gsm7_char(c: char) -> bool {
    char_septets(c).is_some()
}

/// Encodes `text` as unpacked septets (escapes included); None if any character is not in the
/// default alphabet or the extension table. Nothing is ever substituted.
pub fn encode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        let (s, n) = char_septets(c)?;
        out.extend_from_slice(&s[..n]);
    }
    Some(out)
}

/// The number of septets `text` needs (an extension character counts 2); None if not GSM 7-bit.
pub fn septet_len(text: &str) -> Option<usize> {
    text.chars()
        .try_fold(0usize, |acc, c| char_septets(c).map(|(_, n)| acc + n))
}

/// Decodes unpacked septets. Values above 127 are masked to 7 bits; an escape followed by a
/// value with no extension character gives the default-alphabet character (23.038 6.2.1.1);
/// ESC ESC (reserved for a further table) shows a space, as the spec asks; a lone trailing
/// escape is dropped.
pub fn decode(septets: &[u8]) -> String {
    let mut out = String::with_capacity(septets.len());
    let mut iter = septets.iter().map(|s| s & 0x7F);
    while let Some(s) = iter.next() {
        if s != ESC {
            out.push(BASIC[usize::from(s)]);
            continue;
        }
        match iter.next() {
            None => {}
            Some(ESC) => out.push(' '),
            Some(e) => match EXTENSION.iter().find(|&&(v, _)| v == e) {
                Some(&(_, c)) => out.push(c),
                None => out.push(BASIC[usize::from(e)]),
            },
        }
    }
    out
}

/// Packs septets LSB first, after `fill_bits` zero bits (0..=6, used to align text after a user
/// data header on a septet boundary). Bits above 7 in an input value are ignored.
pub fn pack(septets: &[u8], fill_bits: u8) -> Vec<u8> {
    let fill = usize::from(fill_bits);
    let total_bits = fill + septets.len() * 7;
    let mut out = vec![0u8; total_bits.div_ceil(8)];
    for (i, &s) in septets.iter().enumerate() {
        let bit = fill + i * 7;
        let (byte, shift) = (bit / 8, bit % 8);
        let v = u16::from(s & 0x7F) << shift;
        if let Some(b) = out.get_mut(byte) {
            *b |= (v & 0xFF) as u8;
        }
        if v > 0xFF {
            if let Some(b) = out.get_mut(byte + 1) {
                *b |= (v >> 8) as u8;
            }
        }
    }
    out
}

/// Unpacks up to `septet_count` septets from packed `data`, skipping `fill_bits` leading bits.
/// Returns fewer septets if `data` runs out (callers that need exactly `septet_count` check the
/// length); never panics.
pub fn unpack(data: &[u8], fill_bits: u8, septet_count: usize) -> Vec<u8> {
    let fill = usize::from(fill_bits);
    let available = (data.len() * 8).saturating_sub(fill) / 7;
    let n = septet_count.min(available);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let bit = fill + i * 7;
        let (byte, shift) = (bit / 8, bit % 8);
        let lo = u16::from(data.get(byte).copied().unwrap_or(0));
        let hi = u16::from(data.get(byte + 1).copied().unwrap_or(0));
        let v = ((lo | (hi << 8)) >> shift) & 0x7F;
        out.push(v as u8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellohello_vector() {
        let s = encode("hellohello").unwrap();
        assert_eq!(hex::encode_upper(pack(&s, 0)), "E8329BFD4697D9EC37");
        let back = unpack(&hex::decode("E8329BFD4697D9EC37").unwrap(), 0, 10);
        assert_eq!(decode(&back), "hellohello");
    }

    #[test]
    fn whole_default_alphabet_round_trips() {
        let all: String = BASIC.iter().filter(|&&c| c != '\u{1B}').collect();
        assert_eq!(all.chars().count(), 127);
        let s = encode(&all).unwrap();
        assert_eq!(s.len(), 127);
        assert!(s.iter().all(|&v| v < 128 && v != ESC));
        assert_eq!(decode(&s), all);
        let packed = pack(&s, 0);
        assert_eq!(decode(&unpack(&packed, 0, s.len())), all);
    }

    #[test]
    fn specific_code_points() {
        assert_eq!(encode("@£$¥").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(
            encode("Δ_ΦΓΛΩΠΨΣΘΞ").unwrap(),
            (0x10..=0x1A).collect::<Vec<u8>>()
        );
        assert_eq!(encode("ÆæßÉ").unwrap(), vec![0x1C, 0x1D, 0x1E, 0x1F]);
        assert_eq!(encode("¤¡§¿à").unwrap(), vec![0x24, 0x40, 0x5F, 0x60, 0x7F]);
        assert_eq!(
            encode("ÄÖÑÜäöñü").unwrap(),
            vec![0x5B, 0x5C, 0x5D, 0x5E, 0x7B, 0x7C, 0x7D, 0x7E]
        );
        assert_eq!(encode("\n\r").unwrap(), vec![0x0A, 0x0D]);
    }

    #[test]
    fn extension_table() {
        assert_eq!(
            encode("^{}\\[~]|€\u{0C}").unwrap(),
            vec![
                ESC, 0x14, ESC, 0x28, ESC, 0x29, ESC, 0x2F, ESC, 0x3C, ESC, 0x3D, ESC, 0x3E, ESC,
                0x40, ESC, 0x65, ESC, 0x0A
            ]
        );
        assert_eq!(septet_len("€"), Some(2));
        assert_eq!(septet_len("a€[b"), Some(6));
        assert_eq!(decode(&encode("Preis: 5€ [x]").unwrap()), "Preis: 5€ [x]");
    }

    #[test]
    fn unrepresentable_is_none_not_question_mark() {
        for t in ["ç", "आ", "😀", "\u{1B}", "`", "Ş", "\t"] {
            assert_eq!(encode(t), None, "{t:?}");
            assert_eq!(septet_len(t), None);
        }
        assert_eq!(encode(""), Some(vec![]));
        assert_eq!(septet_len(""), Some(0));
    }

    #[test]
    fn decode_oddities() {
        // Unknown escape gives the base character.
        assert_eq!(decode(&[ESC, 0x41]), "A");
        assert_eq!(decode(&[ESC, ESC]), " ");
        assert_eq!(decode(&[0x41, ESC]), "A");
        assert_eq!(decode(&[0xC1]), "A");
        assert_eq!(decode(&[]), "");
    }

    #[test]
    fn pack_with_fill_bits() {
        // One fill bit after a 6-octet UDH: the first septet starts at bit 1.
        let p = pack(&[0x41], 1);
        assert_eq!(p, vec![0x82]);
        assert_eq!(unpack(&p, 1, 1), vec![0x41]);
        for fill in 0..7u8 {
            let s = encode("The quick brown fox 0123456789 €").unwrap();
            let p = pack(&s, fill);
            assert_eq!(p.len(), (usize::from(fill) + s.len() * 7).div_ceil(8));
            assert_eq!(unpack(&p, fill, s.len()), s);
        }
    }

    #[test]
    fn unpack_short_data_never_panics() {
        assert_eq!(unpack(&[], 0, 10), Vec::<u8>::new());
        assert_eq!(unpack(&[0xFF], 6, 10), Vec::<u8>::new());
        assert_eq!(unpack(&[0xFF], 1, 10), vec![0x7F]);
        assert_eq!(unpack(&[0xFF; 7], 0, 100).len(), 8);
        assert_eq!(unpack(&[0xFF; 3], 200, 5), Vec::<u8>::new());
    }

    #[test]
    fn eight_septets_fill_seven_octets() {
        let s = encode("12345678").unwrap();
        assert_eq!(pack(&s, 0).len(), 7);
        assert_eq!(pack(&s[..7], 0).len(), 7);
        assert_eq!(decode(&unpack(&pack(&s, 0), 0, 8)), "12345678");
    }
}
