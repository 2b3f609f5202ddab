//! Applying an append-only rewrite to the file itself, in steps after each of which the file
//! still loads.
//!
//! The rewrite's own writes are ordered for a copy: applied one by one to the file, a state in
//! between could have the dynamic section pointing at tables already overwritten. So the loader
//! is first moved onto a staging area appended past the rewrite's end: a copy of the final
//! program header table whose `PT_DYNAMIC` and `PT_INTERP` point at copies of the final dynamic
//! section and interpreter, mapped by one more (writable) `PT_LOAD`. While the ELF header names
//! that table, nothing the loader reads lies in the original bytes being rewritten. The final
//! ELF header then switches to the final table, and the staging area is cut off.

use super::codec::Codec;
use super::read::{Class, Elf, PF_R, PF_W, PT_DYNAMIC, PT_INTERP, PT_LOAD, PT_PHDR, Segment};
use super::rewrite::{Rewrite, Write};

/// The steps, in order; the caller makes each durable before the next when it must survive a
/// power loss, not only a kill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InPlaceSteps {
    /// Past the original end: the rewrite's new data, then the staging area.
    pub append: Vec<Write>,
    /// The ELF header naming the staging table.
    pub enter: Write,
    /// The rewrite's writes into the original bytes, the ELF header left out.
    pub front: Vec<Write>,
    /// The final ELF header.
    pub leave: Write,
    /// The rewrite's length: the staging area is cut off at it.
    pub len: u64,
}

/// The steps applying `rewrite` to the file `elf` was parsed from, or `None` when the rewrite
/// is not append-only or its result has no program header table to stage.
pub fn in_place_steps(elf: &Elf, rewrite: &Rewrite) -> Option<InPlaceSteps> {
    let input_len = elf.data.len() as u64;
    let c = elf.codec();
    let ehdr_len = c.ehdr_size() as u64;
    if !rewrite.is_append_only(input_len) || input_len < ehdr_len {
        return None;
    }
    let view = FinalView {
        input: elf.data,
        rewrite,
    };
    let final_ehdr = view.bytes(0, ehdr_len);
    let segments = final_segments(c, &view, &final_ehdr)?;
    let staging = staging_area(elf, c, &view, &segments, rewrite.len)?;
    let mut enter = elf.data[..ehdr_len as usize].to_vec();
    put(&mut enter, c.ehdr_phoff(), &c.word(staging.table_offset));
    put(&mut enter, c.ehdr_phnum(), &c.u16(staging.count));

    let (mut append, mut front) = (Vec::new(), Vec::new());
    for w in &rewrite.writes {
        if w.offset >= input_len {
            append.push(w.clone());
        } else {
            front.extend(clip_below(w, ehdr_len));
        }
    }
    append.push(staging.area);
    Some(InPlaceSteps {
        append,
        enter: Write {
            offset: 0,
            bytes: enter,
        },
        front,
        leave: Write {
            offset: 0,
            bytes: final_ehdr,
        },
        len: rewrite.len,
    })
}

/// The final content, read through the rewrite without building it.
struct FinalView<'a> {
    input: &'a [u8],
    rewrite: &'a Rewrite,
}

impl FinalView<'_> {
    fn bytes(&self, offset: u64, len: u64) -> Vec<u8> {
        self.rewrite.window(self.input, offset, offset + len)
    }

    fn holds(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.rewrite.len)
    }
}

/// The final program headers, as the final ELF header names them.
fn final_segments(c: Codec, view: &FinalView, ehdr: &[u8]) -> Option<Vec<Segment>> {
    let phoff = match c.class {
        Class::Elf32 => u64::from(c.read_u32(&ehdr[c.ehdr_phoff() as usize..])),
        Class::Elf64 => c.read_u64(&ehdr[c.ehdr_phoff() as usize..]),
    };
    let count = u64::from(c.read_u16(&ehdr[c.ehdr_phnum() as usize..]));
    let size = c.phdr_size() as u64;
    if count == 0 || !view.holds(phoff, count * size) {
        return None;
    }
    let table = view.bytes(phoff, count * size);
    Some(
        table
            .chunks_exact(size as usize)
            .map(|b| c.read_phdr(b))
            .collect(),
    )
}

struct Staging {
    area: Write,
    table_offset: u64,
    count: u16,
}

/// The staging area: the final table with `PT_PHDR`, `PT_DYNAMIC` and `PT_INTERP` pointing into
/// the area, which one more `PT_LOAD` maps, followed by copies of what they point at.
fn staging_area(
    elf: &Elf,
    c: Codec,
    view: &FinalView,
    segments: &[Segment],
    final_len: u64,
) -> Option<Staging> {
    let count = segments.len() + 1;
    let table_len = (count * c.phdr_size()) as u64;
    let offset = final_len.next_multiple_of(8);
    let page = elf.max_page_size();
    let vaddr_end = segments
        .iter()
        .filter(|s| s.is_load())
        .map(Segment::vaddr_end)
        .max()?;
    let vaddr = vaddr_end.checked_next_multiple_of(page)? + offset % page;

    let mut copies: Vec<u8> = Vec::new();
    let mut staged = segments.to_vec();
    for seg in staged
        .iter_mut()
        .filter(|s| matches!(s.p_type, PT_DYNAMIC | PT_INTERP))
    {
        if !view.holds(seg.offset, seg.filesz) {
            return None;
        }
        let at = table_len + copies.len() as u64;
        copies.extend(view.bytes(seg.offset, seg.filesz));
        copies.resize(copies.len().next_multiple_of(8), 0);
        seg.offset = offset + at;
        seg.vaddr = vaddr + at;
        seg.paddr = seg.vaddr;
        seg.memsz = seg.filesz;
    }
    let area_len = table_len + copies.len() as u64;
    if let Some(phdr) = staged.iter_mut().find(|s| s.p_type == PT_PHDR) {
        (phdr.offset, phdr.vaddr, phdr.paddr) = (offset, vaddr, vaddr);
        (phdr.filesz, phdr.memsz) = (table_len, table_len);
    }
    let load_at = staged.iter().rposition(Segment::is_load)? + 1;
    staged.insert(
        load_at,
        Segment {
            p_type: PT_LOAD,
            flags: PF_R | PF_W,
            offset,
            vaddr,
            paddr: vaddr,
            filesz: area_len,
            memsz: area_len,
            align: page,
        },
    );
    if c.class == Class::Elf32
        && (offset + area_len > u64::from(u32::MAX) || vaddr + area_len > u64::from(u32::MAX))
    {
        return None;
    }
    let mut bytes: Vec<u8> = staged.iter().flat_map(|s| c.phdr(s)).collect();
    bytes.extend(copies);
    Some(Staging {
        area: Write { offset, bytes },
        table_offset: offset,
        count: u16::try_from(count).ok().filter(|&n| n < 0xffff)?,
    })
}

/// The part of `w` at or after `from`.
fn clip_below(w: &Write, from: u64) -> Option<Write> {
    let end = w.offset + w.bytes.len() as u64;
    if end <= from {
        return None;
    }
    let skip = from.saturating_sub(w.offset);
    Some(Write {
        offset: w.offset + skip,
        bytes: w.bytes[skip as usize..].to_vec(),
    })
}

fn put(buf: &mut [u8], at: u64, bytes: &[u8]) {
    buf[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::{Edits, RunPathEdit, plan};

    /// A host program, grown by a long interpreter and run path.
    fn grown() -> (Vec<u8>, Rewrite) {
        let input = std::fs::read("/bin/true").unwrap();
        let elf = Elf::parse(&input).unwrap();
        let edits = Edits {
            interpreter: Some(vec![b'i'; 300]),
            run_path: Some(RunPathEdit::Set(vec![b'r'; 700])),
            ..Edits::default()
        };
        let rewrite = plan(&elf, &edits).unwrap().unwrap();
        (input, rewrite)
    }

    /// Applies the steps up to and including `upto` (0 = append, 4 = cut).
    fn apply_steps(input: &[u8], steps: &InPlaceSteps, upto: usize) -> Vec<u8> {
        let mut out = input.to_vec();
        let mut write = |w: &Write| {
            let end = w.offset as usize + w.bytes.len();
            if out.len() < end {
                out.resize(end, 0);
            }
            out[w.offset as usize..end].copy_from_slice(&w.bytes);
        };
        steps.append.iter().for_each(&mut write);
        if upto >= 1 {
            write(&steps.enter);
        }
        if upto >= 2 {
            steps.front.iter().for_each(&mut write);
        }
        if upto >= 3 {
            write(&steps.leave);
        }
        if upto >= 4 {
            out.truncate(steps.len as usize);
        }
        out
    }

    #[test]
    fn the_last_step_gives_the_rewrites_result() {
        let (input, rewrite) = grown();
        let elf = Elf::parse(&input).unwrap();
        let steps = in_place_steps(&elf, &rewrite).unwrap();
        assert_eq!(apply_steps(&input, &steps, 4), rewrite.apply(&input));
    }

    #[test]
    fn while_staged_the_loader_reads_only_appended_bytes_and_the_final_data() {
        let (input, rewrite) = grown();
        let elf = Elf::parse(&input).unwrap();
        let steps = in_place_steps(&elf, &rewrite).unwrap();
        for upto in 1..=2 {
            let out = apply_steps(&input, &steps, upto);
            let staged = Elf::parse(&out).unwrap();
            assert!(staged.phoff >= input.len() as u64);
            assert_eq!(staged.interpreter(), Some(&[b'i'; 300][..]));
            assert_eq!(staged.run_path().unwrap().1, &[b'r'; 700][..]);
            let dynamic = staged
                .segments
                .iter()
                .find(|s| s.p_type == PT_DYNAMIC)
                .unwrap();
            assert!(dynamic.offset >= input.len() as u64);
        }
    }

    #[test]
    fn a_rewrite_that_is_not_append_only_has_no_steps() {
        let (input, mut rewrite) = grown();
        let elf = Elf::parse(&input).unwrap();
        rewrite.keep = 16;
        assert!(in_place_steps(&elf, &rewrite).is_none());
    }
}
