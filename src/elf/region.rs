//! Growth: new data in a loadable segment added at the end of the file.
//!
//! The region starts with the program header table (which gains the region's `PT_LOAD`; binutils
//! expects a segment holding the table to start with it), then a small marker (so a later edit
//! can recognise and rebuild the region instead of adding another), then
//! whichever of the dynamic section, interpreter and dynamic string table had to move. Nothing the
//! file held before is moved or overwritten except header fields, so every original structure
//! stays valid and the edit never shifts code or data.

use super::codec::Codec;
use super::edit::{dynamic_in_place, interp_in_place, overwrites_in_place, set_strtab};
use super::error::ElfError;
use super::read::{DynEntry, Elf, PF_R, PF_W, PT_DYNAMIC, PT_INTERP, PT_LOAD, PT_PHDR, Segment, slice};
use super::rewrite::{Rewrite, TailMove, Write};
use super::strings::Placement;

const MAGIC: &[u8; 16] = b"autopatch-grow\0\x01";
const MARKER_LEN: u64 = 32;
/// Spare dynamic slots, so adding a library later does not need another growth.
const SPARE_DYNAMIC_SLOTS: usize = 4;
const SHT_PROGBITS: u32 = 1;
const SHT_STRTAB: u32 = 3;
const SHT_DYNAMIC: u32 = 6;

/// A growth region an earlier edit added.
#[derive(Debug, Clone)]
pub(crate) struct GrowthRegion {
    segment: usize,
    offset: u64,
    end: u64,
    /// Length of the string table copied from before the first growth; strings past it were
    /// appended by edits.
    base_strsz: u64,
}

impl GrowthRegion {
    fn contains(&self, offset: u64) -> bool {
        (self.offset..self.end).contains(&offset)
    }

    /// The part of the current string table that predates any growth, when the table lies in
    /// this region.
    pub fn strtab_base(&self, elf: &Elf) -> Option<usize> {
        let table = elf.strtab.as_ref()?;
        self.contains(table.offset).then_some(self.base_strsz as usize)
    }
}

/// Finds the region an earlier growth added: the last `PT_LOAD`, starting with the program
/// headers, followed by the marker.
pub(crate) fn find(elf: &Elf) -> Option<GrowthRegion> {
    let segment = elf.segments.iter().rposition(Segment::is_load)?;
    let seg = &elf.segments[segment];
    if elf.phoff != seg.offset {
        return None;
    }
    let phdrs_len = (elf.segments.len() * elf.codec().phdr_size()) as u64;
    let marker = slice(elf.data, seg.offset + phdrs_len, MARKER_LEN)?;
    if &marker[..16] != MAGIC {
        return None;
    }
    Some(GrowthRegion {
        segment,
        offset: seg.offset,
        end: seg.offset + seg.filesz,
        base_strsz: u64::from_le_bytes(marker[16..24].try_into().ok()?),
    })
}

/// What the plan needs the growth to hold.
pub(crate) struct Growth {
    pub interpreter: Option<Vec<u8>>,
    pub entries: Vec<DynEntry>,
    pub placement: Option<Placement>,
    pub base_len: usize,
    pub field_writes: Vec<Write>,
    pub move_dynamic: bool,
    pub move_interp: bool,
}

/// Offsets inside the region being built.
struct Layout {
    offset: u64,
    vaddr: u64,
    phdrs: u64,
    marker: u64,
    dynamic: Option<u64>,
    interp: Option<u64>,
    strtab: Option<u64>,
    len: u64,
}

impl Layout {
    fn vaddr_of(&self, offset: u64) -> u64 {
        self.vaddr + (offset - self.offset)
    }
}

pub(crate) fn grow(
    elf: &Elf,
    existing: Option<GrowthRegion>,
    growth: Growth,
) -> Result<Rewrite, ElfError> {
    let c = elf.codec();
    let reuse = existing.filter(|r| tail_is_unloaded(elf, r));
    let in_reused = |offset: Option<u64>| {
        offset.is_some_and(|o| reuse.as_ref().is_some_and(|r| r.contains(o)))
    };
    let interp_seg = elf.interp_segment();
    let interp = (growth.move_interp || in_reused(interp_seg.map(|s| s.offset)))
        .then(|| growth.interpreter.clone().or_else(|| elf.interpreter().map(<[u8]>::to_vec)))
        .flatten();
    let move_dynamic = growth.move_dynamic || in_reused(elf.dynamic.as_ref().map(|d| d.offset));
    let table = elf.strtab.as_ref();
    let strtab = match &growth.placement {
        Some(p) if p.appended || in_reused(table.map(|t| t.offset)) => Some(p.table.clone()),
        None if in_reused(table.map(|t| t.offset)) => table.map(|t| t.bytes.to_vec()),
        _ => None,
    };

    let mut segments = elf.segments.clone();
    if let Some(r) = &reuse {
        segments.remove(r.segment);
    }
    let load_at = segments
        .iter()
        .rposition(Segment::is_load)
        .map_or(segments.len(), |i| i + 1);
    if segments.len() + 1 >= 0xffff {
        return Err(ElfError::Unsupported("too many program headers to add one".into()));
    }

    let cut = reuse.as_ref().map_or(elf.data.len() as u64, |r| r.offset);
    let page = elf.max_page_size();
    let dyn_count = growth.entries.len() + 1 + SPARE_DYNAMIC_SLOTS;
    let layout = lay_out(
        c,
        cut,
        page,
        max_vaddr_end(&segments),
        segments.len() + 1,
        move_dynamic.then_some(dyn_count),
        interp.as_ref().map(Vec::len),
        strtab.as_ref().map(Vec::len),
    );
    if c.class == super::read::Class::Elf32 && layout.offset + layout.len > u64::from(u32::MAX) {
        return Err(ElfError::Unsupported("a 32-bit file cannot grow past 4 GiB".into()));
    }

    let mut entries = growth.entries.clone();
    if let (Some(at), Some(bytes)) = (layout.strtab, &strtab) {
        set_strtab(&mut entries, layout.vaddr_of(at), bytes.len() as u64);
    }
    let new_load = Segment {
        p_type: PT_LOAD,
        flags: if move_dynamic { PF_R | PF_W } else { PF_R },
        offset: layout.offset,
        vaddr: layout.vaddr,
        paddr: layout.vaddr,
        filesz: layout.len,
        memsz: layout.len,
        align: page,
    };
    segments.insert(load_at, new_load);
    let phdrs_len = (segments.len() * c.phdr_size()) as u64;
    place_segment(&mut segments, PT_PHDR, &layout, Some(layout.phdrs), phdrs_len);
    if let Some(at) = layout.dynamic {
        place_segment(&mut segments, PT_DYNAMIC, &layout, Some(at), (dyn_count * c.dyn_size()) as u64);
    }
    if let (Some(at), Some(s)) = (layout.interp, &interp) {
        place_segment(&mut segments, PT_INTERP, &layout, Some(at), s.len() as u64 + 1);
    }

    let mut region = vec![0u8; layout.len as usize];
    let mut put = |at: u64, bytes: &[u8]| {
        let rel = (at - layout.offset) as usize;
        region[rel..rel + bytes.len()].copy_from_slice(bytes);
    };
    let base_strsz = if strtab.is_some() { growth.base_len as u64 } else { 0 };
    put(layout.marker, &marker(base_strsz));
    put(layout.phdrs, &segments.iter().flat_map(|s| c.phdr(s)).collect::<Vec<u8>>());
    if let Some(at) = layout.dynamic {
        let table: Vec<u8> = entries
            .iter()
            .flat_map(|e| c.dyn_entry(e.tag, e.val))
            .chain(std::iter::repeat_n(0, (dyn_count - entries.len()) * c.dyn_size()))
            .collect();
        put(at, &table);
    }
    if let (Some(at), Some(s)) = (layout.interp, &interp) {
        put(at, s);
    }
    if let (Some(at), Some(bytes)) = (layout.strtab, &strtab) {
        put(at, bytes);
    }

    let tail = reuse.as_ref().and_then(|r| tail_move(elf, r, &layout));
    let shift = |offset: u64| match tail {
        Some(t) if offset >= t.from => offset - t.from + t.to,
        _ => offset,
    };

    // New data first, then what points at it: the ELF header switches to the new program
    // headers, and only then do in-place fields start referring to the region.
    let mut writes = vec![Write {
        offset: layout.offset,
        bytes: region,
    }];
    if strtab.is_none()
        && let Some(p) = &growth.placement
    {
        writes.extend(overwrites_in_place(elf, p));
    }
    writes.extend(growth.field_writes.iter().cloned());
    writes.push(Write {
        offset: c.ehdr_phoff(),
        bytes: c.word(layout.phdrs),
    });
    writes.push(Write {
        offset: c.ehdr_phnum(),
        bytes: c.u16(segments.len() as u16).to_vec(),
    });
    if elf.shoff != 0 && shift(elf.shoff) != elf.shoff {
        writes.push(Write {
            offset: c.ehdr_shoff(),
            bytes: c.word(shift(elf.shoff)),
        });
    }
    if interp.is_none()
        && let Some(new) = &growth.interpreter
    {
        writes.push(interp_in_place(elf, new));
    }
    if layout.dynamic.is_none() {
        writes.extend(dynamic_in_place(elf, &entries));
    }
    writes.extend(section_header_writes(elf, &layout, &strtab, interp.as_ref(), dyn_count, &shift));

    let len = tail.map_or(layout.offset + layout.len, |t| t.to + t.len);
    Ok(Rewrite {
        keep: cut,
        tail,
        writes,
        len,
    })
}

fn marker(base_strsz: u64) -> Vec<u8> {
    let mut m = MAGIC.to_vec();
    m.extend(base_strsz.to_le_bytes());
    m.resize(MARKER_LEN as usize, 0);
    m
}

fn align_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align) * align
}

fn max_vaddr_end(segments: &[Segment]) -> u64 {
    segments
        .iter()
        .filter(|s| s.is_load())
        .map(Segment::vaddr_end)
        .max()
        .unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
fn lay_out(
    c: Codec,
    cut: u64,
    page: u64,
    vaddr_end: u64,
    phnum: usize,
    dyn_count: Option<usize>,
    interp_len: Option<usize>,
    strtab_len: Option<usize>,
) -> Layout {
    let word = c.word_size() as u64;
    let offset = align_up(cut, 16);
    // The address keeps the offset's remainder modulo the page, as mmap requires, and starts on
    // a page of its own above everything loaded before.
    let vaddr = align_up(vaddr_end, page) + offset % page;
    let phdrs = offset;
    let marker = phdrs + (phnum * c.phdr_size()) as u64;
    let mut end = marker + MARKER_LEN;
    let mut take = |len: usize, align: u64| {
        let at = align_up(end, align);
        end = at + len as u64;
        at
    };
    let dynamic = dyn_count.map(|n| take(n * c.dyn_size(), word));
    let interp = interp_len.map(|n| take(n + 1, 1));
    let strtab = strtab_len.map(|n| take(n, 1));
    Layout {
        offset,
        vaddr,
        phdrs,
        marker,
        dynamic,
        interp,
        strtab,
        len: end - offset,
    }
}

/// Points the first segment of `p_type` at `at` in the region.
fn place_segment(segments: &mut [Segment], p_type: u32, layout: &Layout, at: Option<u64>, len: u64) {
    let (Some(at), Some(seg)) = (at, segments.iter_mut().find(|s| s.p_type == p_type)) else {
        return;
    };
    let vaddr = layout.vaddr_of(at);
    seg.paddr = seg.paddr.wrapping_sub(seg.vaddr).wrapping_add(vaddr);
    seg.offset = at;
    seg.vaddr = vaddr;
    seg.filesz = len;
    seg.memsz = len;
}

/// A region can be rebuilt at another size only when every other segment with file data lies
/// before it or inside it.
fn tail_is_unloaded(elf: &Elf, region: &GrowthRegion) -> bool {
    elf.segments.iter().enumerate().all(|(i, s)| {
        let end = s.offset + s.filesz;
        i == region.segment
            || s.filesz == 0
            || end <= region.offset
            || (region.contains(s.offset) && end <= region.end)
    })
}

fn tail_move(elf: &Elf, region: &GrowthRegion, layout: &Layout) -> Option<TailMove> {
    let len = (elf.data.len() as u64).checked_sub(region.end)?;
    if len == 0 {
        return None;
    }
    let new_end = layout.offset + layout.len;
    // Keep the tail's alignment: section data and headers there need at most 64-byte alignment.
    let to = align_up(new_end, 64) + region.end % 64;
    Some(TailMove {
        from: region.end,
        len,
        to,
    })
}

fn section_header_writes(
    elf: &Elf,
    layout: &Layout,
    strtab: &Option<Vec<u8>>,
    interp: Option<&Vec<u8>>,
    dyn_count: usize,
    shift: &dyn Fn(u64) -> u64,
) -> Vec<Write> {
    let c = elf.codec();
    let old_strtab = elf.strtab.as_ref().map(|t| t.vaddr);
    let old_interp = elf.interp_segment().map(|s| s.vaddr);
    let mut writes = Vec::new();
    for s in &elf.sections {
        let moved = if s.addr != 0 && s.sh_type == SHT_STRTAB && Some(s.addr) == old_strtab {
            layout.strtab.zip(strtab.as_ref().map(Vec::len))
        } else if s.sh_type == SHT_DYNAMIC {
            layout.dynamic.map(|at| (at, dyn_count * c.dyn_size()))
        } else if s.addr != 0 && s.sh_type == SHT_PROGBITS && Some(s.addr) == old_interp {
            layout.interp.zip(interp.map(|i| i.len() + 1))
        } else {
            None
        };
        let (addr, offset, size) = match moved {
            Some((at, len)) => (layout.vaddr_of(at), at, len as u64),
            None => (s.addr, shift(s.offset), s.size),
        };
        if (addr, offset, size) != (s.addr, s.offset, s.size) || shift(s.header_offset) != s.header_offset {
            writes.push(Write {
                offset: shift(s.header_offset) + c.shdr_addr(),
                bytes: c.shdr_placement(addr, offset, size),
            });
        }
    }
    writes
}
