//! Encoding of the few ELF structures the editor writes, for either class and byte order.

use super::read::{Class, Segment};

/// Class and byte order of a file: enough to encode its header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    pub class: Class,
    pub little: bool,
}

impl Codec {
    pub fn word_size(self) -> usize {
        match self.class {
            Class::Elf32 => 4,
            Class::Elf64 => 8,
        }
    }

    pub fn u16(self, v: u16) -> [u8; 2] {
        if self.little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    }

    pub fn u32(self, v: u32) -> [u8; 4] {
        if self.little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    }

    pub fn u64(self, v: u64) -> [u8; 8] {
        if self.little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    }

    /// A class-sized word (address, offset or size).
    pub fn word(self, v: u64) -> Vec<u8> {
        match self.class {
            Class::Elf32 => self.u32(v as u32).to_vec(),
            Class::Elf64 => self.u64(v).to_vec(),
        }
    }

    pub fn read_u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.little {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        }
    }

    pub fn read_u64(self, b: &[u8]) -> u64 {
        let a = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
        if self.little {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        }
    }

    pub fn read_u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    }

    pub fn phdr_size(self) -> usize {
        match self.class {
            Class::Elf32 => 32,
            Class::Elf64 => 56,
        }
    }

    pub fn shdr_size(self) -> usize {
        match self.class {
            Class::Elf32 => 40,
            Class::Elf64 => 64,
        }
    }

    pub fn dyn_size(self) -> usize {
        2 * self.word_size()
    }

    pub fn phdr(self, s: &Segment) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.phdr_size());
        out.extend(self.u32(s.p_type));
        if self.class == Class::Elf64 {
            out.extend(self.u32(s.flags));
        }
        for v in [s.offset, s.vaddr, s.paddr, s.filesz, s.memsz] {
            out.extend(self.word(v));
        }
        if self.class == Class::Elf32 {
            out.extend(self.u32(s.flags));
        }
        out.extend(self.word(s.align));
        out
    }

    /// Decodes one program header of [`Codec::phdr_size`] bytes.
    pub fn read_phdr(self, b: &[u8]) -> Segment {
        let word = |at: usize| match self.class {
            Class::Elf32 => u64::from(self.read_u32(&b[at..])),
            Class::Elf64 => self.read_u64(&b[at..]),
        };
        // ELF64 puts p_flags second, ELF32 seventh.
        let (flags_at, words_at, align_at) = match self.class {
            Class::Elf32 => (24, 4, 28),
            Class::Elf64 => (4, 8, 48),
        };
        let field = |i: usize| word(words_at + i * self.word_size());
        Segment {
            p_type: self.read_u32(b),
            flags: self.read_u32(&b[flags_at..]),
            offset: field(0),
            vaddr: field(1),
            paddr: field(2),
            filesz: field(3),
            memsz: field(4),
            align: word(align_at),
        }
    }

    /// Size of the ELF header.
    pub fn ehdr_size(self) -> usize {
        match self.class {
            Class::Elf32 => 52,
            Class::Elf64 => 64,
        }
    }

    pub fn dyn_entry(self, tag: i64, val: u64) -> Vec<u8> {
        let mut out = self.word(tag as u64);
        out.extend(self.word(val));
        out
    }

    /// Offsets of `e_phoff`, `e_shoff` and `e_phnum` inside the ELF header.
    pub fn ehdr_phoff(self) -> u64 {
        match self.class {
            Class::Elf32 => 28,
            Class::Elf64 => 32,
        }
    }

    pub fn ehdr_shoff(self) -> u64 {
        match self.class {
            Class::Elf32 => 32,
            Class::Elf64 => 40,
        }
    }

    pub fn ehdr_phnum(self) -> u64 {
        match self.class {
            Class::Elf32 => 44,
            Class::Elf64 => 56,
        }
    }

    /// Offset of `sh_addr` in a section header; `sh_offset` and `sh_size` follow it.
    pub fn shdr_addr(self) -> u64 {
        match self.class {
            Class::Elf32 => 12,
            Class::Elf64 => 16,
        }
    }

    /// `sh_addr`, `sh_offset` and `sh_size`, encoded in a row as they lie in a section header.
    pub fn shdr_placement(self, addr: u64, offset: u64, size: u64) -> Vec<u8> {
        let mut out = self.word(addr);
        out.extend(self.word(offset));
        out.extend(self.word(size));
        out
    }
}
