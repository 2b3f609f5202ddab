//! SHA-256 as conda's records and the journal write it: lowercase hex.

/// An incremental SHA-256. Backed by ring, whose assembly uses AVX2 where the CPU has it and
/// no SHA extensions: nearly twice the throughput of a portable implementation, and hashing
/// rewritten files is most of the CPU time of a large `fix`.
pub struct Sha256(ring::digest::Context);

impl Sha256 {
    pub fn new() -> Sha256 {
        Sha256(ring::digest::Context::new(&ring::digest::SHA256))
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest as lowercase hexadecimal.
    pub fn hex(self) -> String {
        to_hex(self.0.finish().as_ref())
    }
}

impl Default for Sha256 {
    fn default() -> Sha256 {
        Sha256::new()
    }
}

/// Bytes as lowercase hexadecimal. The journal writes kilobytes of it per file, so the digits
/// are gathered as bytes and checked as text once.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits: Vec<u8> = bytes
        .iter()
        .flat_map(|&b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
        .collect();
    String::from_utf8(digits).expect("hexadecimal digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_the_published_vectors() {
        let mut h = Sha256::new();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(
            h.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            Sha256::new().hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(to_hex(&[0x00, 0x7f, 0xa0, 0xff]), "007fa0ff");
    }
}
