//! Growth: new data in a loadable segment added at the end of the file.
//!
//! The program header table gains one `PT_LOAD` for the region. It stays right after the ELF
//! header whenever the few bytes it needs can be freed by moving what follows it (the
//! interpreter string, notes, hash and symbol tables: things found only through program headers
//! and dynamic tags) into the region; binutils (`strip`, `objcopy`) expects the table there.
//! Otherwise the table itself moves into the region.
//!
//! The region holds, in order: the program header table (only when it moved), a marker (so a
//! later edit recognises the region and rebuilds it instead of adding another), the blocks moved
//! to make room, then whichever of the dynamic section, interpreter and dynamic string table had
//! to grow. Code and data never move.

use super::codec::Codec;
use super::edit::{dynamic_in_place, interp_in_place, overwrites_in_place, set_strtab, spans_meet};
use super::error::ElfError;
use super::read::{
    Class, DT_GNU_HASH, DT_HASH, DT_STRTAB, DT_SYMTAB, DT_VERDEF, DT_VERNEED, DynEntry, Elf, PF_R,
    PF_W, PT_DYNAMIC, PT_INTERP, PT_LOAD, PT_PHDR, Segment, slice,
};
use super::rewrite::{Rewrite, TailMove, Write};
use super::strings::Placement;

const MAGIC: &[u8; 16] = b"autopatch-grow\0\x02";
const MARKER_LEN: u64 = 32;
/// Spare dynamic slots, so adding a library later does not need another growth.
const SPARE_DYNAMIC_SLOTS: usize = 4;
const SHT_PROGBITS: u32 = 1;
const SHT_STRTAB: u32 = 3;
const SHT_DYNAMIC: u32 = 6;
const SHT_NOTE: u32 = 7;
const SHT_NOBITS: u32 = 8;
const SHF_ALLOC: u64 = 2;
const PT_NOTE: u32 = 4;
const DT_VERSYM: i64 = 0x6fff_fff0;
/// Dynamic tags holding the address of a table that may be moved to make room.
const MOVABLE_TABLE_TAGS: [i64; 6] = [
    DT_HASH,
    DT_SYMTAB,
    DT_GNU_HASH,
    DT_VERSYM,
    DT_VERDEF,
    DT_VERNEED,
];

/// A growth region an earlier edit added.
#[derive(Debug, Clone)]
pub(crate) struct GrowthRegion {
    segment: usize,
    offset: u64,
    end: u64,
    /// Length of the string table copied from before the first growth; strings past it were
    /// appended by edits.
    base_strsz: u64,
    /// Where the blocks moved to make room lie, and their length.
    blocks: (u64, u64),
    table_inside: bool,
}

impl GrowthRegion {
    fn contains(&self, offset: u64) -> bool {
        (self.offset..self.end).contains(&offset)
    }

    /// Whether `span` (offset, length) shares a byte with what an edit rewrites here: all but the
    /// program header table and the moved blocks.
    pub fn rebuilt_part_meets(&self, span: (u64, u64)) -> bool {
        let marker = self.blocks.0 - MARKER_LEN;
        let after_blocks = self.blocks.0 + self.blocks.1;
        spans_meet(span, (marker, MARKER_LEN))
            || spans_meet(span, (after_blocks, self.end.saturating_sub(after_blocks)))
    }

    /// The part of the current string table that predates any growth, when the table lies in
    /// this region.
    pub fn strtab_base(&self, elf: &Elf) -> Option<usize> {
        let table = elf.strtab.as_ref()?;
        self.contains(table.offset)
            .then_some(self.base_strsz as usize)
    }
}

/// Finds the region an earlier growth added: the last `PT_LOAD`, holding the marker at its
/// start or right after a program header table at its start.
pub(crate) fn find(elf: &Elf) -> Option<GrowthRegion> {
    let segment = elf.segments.iter().rposition(Segment::is_load)?;
    let seg = &elf.segments[segment];
    let table_inside = elf.phoff == seg.offset;
    let table_len = if table_inside {
        (elf.segments.len() * elf.codec().phdr_size()) as u64
    } else {
        0
    };
    let marker_at = seg.offset + table_len;
    let marker = slice(elf.data, marker_at, MARKER_LEN)?;
    if &marker[..16] != MAGIC {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(marker[at..at + 8].try_into().unwrap_or_default());
    let end = seg.offset + seg.filesz;
    let blocks = (marker_at + MARKER_LEN, word(24));
    // A marker whose moved blocks do not fit in the region is not one this editor wrote.
    if blocks.0.checked_add(blocks.1)? > end {
        return None;
    }
    Some(GrowthRegion {
        segment,
        offset: seg.offset,
        end,
        base_strsz: word(16),
        blocks,
        table_inside,
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

/// File bytes moved into the region unchanged; everything pointing into them follows.
#[derive(Debug, Clone, Copy)]
struct Block {
    offset: u64,
    len: u64,
    align: u64,
}

/// Where the program header table goes.
enum TablePlace {
    /// It stays where it is; `moved` blocks free the room its new entry needs.
    InPlace {
        moved: Vec<Block>,
        moves_interp: bool,
        moves_strtab: bool,
    },
    /// It moves to the start of the region.
    Region,
}

/// Offsets inside the region being built.
struct Layout {
    offset: u64,
    vaddr: u64,
    phdrs: Option<u64>,
    marker: u64,
    blocks: u64,
    blocks_len: u64,
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
    let in_reused =
        |offset: Option<u64>| offset.is_some_and(|o| reuse.as_ref().is_some_and(|r| r.contains(o)));
    let place = match &reuse {
        Some(r) if r.table_inside => TablePlace::Region,
        Some(_) => TablePlace::InPlace {
            moved: Vec::new(),
            moves_interp: false,
            moves_strtab: false,
        },
        None => room_after_table(elf).unwrap_or(TablePlace::Region),
    };
    let (moved_for_room, room_interp, room_strtab) = match &place {
        TablePlace::InPlace {
            moved,
            moves_interp,
            moves_strtab,
        } => (moved.clone(), *moves_interp, *moves_strtab),
        TablePlace::Region => (Vec::new(), false, false),
    };
    let mut blocks = moved_for_room;
    if let Some(r) = reuse.as_ref().filter(|r| r.blocks.1 > 0) {
        blocks.push(Block {
            offset: r.blocks.0,
            len: r.blocks.1,
            align: 16,
        });
    }

    let interp_seg = elf.interp_segment();
    let interp = (growth.move_interp || room_interp || in_reused(interp_seg.map(|s| s.offset)))
        .then(|| {
            growth
                .interpreter
                .clone()
                .or_else(|| elf.interpreter().map(<[u8]>::to_vec))
        })
        .flatten();
    let move_dynamic = growth.move_dynamic || in_reused(elf.dynamic.as_ref().map(|d| d.offset));
    let table = elf.strtab.as_ref();
    let strtab_moves = growth.placement.as_ref().is_some_and(|p| p.appended)
        || room_strtab
        || in_reused(table.map(|t| t.offset));
    let strtab = strtab_moves
        .then(|| match &growth.placement {
            Some(p) => Some(p.table.clone()),
            None => table.map(|t| t.bytes.to_vec()),
        })
        .flatten();

    let mut segments = elf.segments.clone();
    if let Some(r) = &reuse {
        segments.remove(r.segment);
    }
    let load_at = segments
        .iter()
        .rposition(Segment::is_load)
        .map_or(segments.len(), |i| i + 1);
    if segments.len() + 1 >= 0xffff {
        return Err(ElfError::Unsupported(
            "too many program headers to add one".into(),
        ));
    }

    let cut = reuse.as_ref().map_or(elf.data.len() as u64, |r| r.offset);
    let page = elf.max_page_size();
    let dyn_count = growth.entries.len() + 1 + SPARE_DYNAMIC_SLOTS;
    let layout = lay_out(
        c,
        cut,
        page,
        max_vaddr_end(&segments),
        matches!(place, TablePlace::Region).then_some(segments.len() + 1),
        &blocks,
        move_dynamic.then_some(dyn_count),
        interp.as_ref().map(Vec::len),
        strtab.as_ref().map(Vec::len),
    )
    .ok_or_else(|| {
        ElfError::Unsupported(
            "the loaded segments reach the top of the address space: no room to add one above them"
                .into(),
        )
    })?;
    if c.class == Class::Elf32 && layout.offset + layout.len > u64::from(u32::MAX) {
        return Err(ElfError::Unsupported(
            "a 32-bit file cannot grow past 4 GiB".into(),
        ));
    }
    let relocate = Relocation::new(elf, &blocks, &layout);

    let mut entries = growth.entries.clone();
    relocate.dynamic_entries(&mut entries);
    if let (Some(at), Some(bytes)) = (layout.strtab, &strtab) {
        set_strtab(&mut entries, layout.vaddr_of(at), bytes.len() as u64);
    }
    for seg in &mut segments {
        relocate.segment(seg);
    }
    // A segment moves with the memory it claims past its file bytes, which can then run past
    // the end of the address space: no reader would accept the result.
    if segments
        .iter()
        .any(|s| s.vaddr.checked_add(s.memsz).is_none())
    {
        return Err(ElfError::malformed(
            "a segment claims more memory than the address space holds once moved",
        ));
    }
    segments.insert(
        load_at,
        Segment {
            p_type: PT_LOAD,
            flags: if move_dynamic { PF_R | PF_W } else { PF_R },
            offset: layout.offset,
            vaddr: layout.vaddr,
            paddr: layout.vaddr,
            filesz: layout.len,
            memsz: layout.len,
            align: page,
        },
    );
    let phdrs_len = (segments.len() * c.phdr_size()) as u64;
    let table_at = layout.phdrs.unwrap_or(elf.phoff);
    place_segment(
        &mut segments,
        PT_PHDR,
        table_at,
        table_at_vaddr(elf, &layout),
        phdrs_len,
    );
    if let Some(at) = layout.dynamic {
        let len = (dyn_count * c.dyn_size()) as u64;
        place_segment(
            &mut segments,
            PT_DYNAMIC,
            at,
            Some(layout.vaddr_of(at)),
            len,
        );
    }
    if let (Some(at), Some(s)) = (layout.interp, &interp) {
        let len = s.len() as u64 + 1;
        place_segment(&mut segments, PT_INTERP, at, Some(layout.vaddr_of(at)), len);
    }

    let base_strsz = if strtab.is_some() {
        growth.base_len as u64
    } else {
        0
    };
    let region = fill_region(
        elf,
        &layout,
        &segments,
        &blocks,
        base_strsz,
        &entries,
        dyn_count,
        interp.as_deref(),
        strtab.as_deref(),
    );
    let (region, field_writes) =
        apply_field_writes(region, &layout, &relocate, &growth.field_writes);

    let tail = reuse.as_ref().and_then(|r| tail_move(elf, r, &layout));
    // `None` for an offset that would pass the top of the address space (a damaged header's).
    let shift = |offset: u64| match tail {
        Some(t) if offset >= t.from => (offset - t.from).checked_add(t.to),
        _ => Some(offset),
    };

    // New data first, then what points at it: the program headers switch to the region, and
    // only then do in-place fields start referring to it.
    let mut writes = vec![Write {
        offset: layout.offset,
        bytes: region,
    }];
    // Where the table stays, or was left behind (outside the region being rebuilt), it takes
    // the in-place overwrites: a table left behind then holds no string the edit erased.
    if !in_reused(table.map(|t| t.offset))
        && let Some(p) = &growth.placement
    {
        writes.extend(overwrites_in_place(elf, p));
    }
    writes.extend(field_writes);
    let table: Vec<u8> = segments.iter().flat_map(|s| c.phdr(s)).collect();
    if layout.phdrs.is_none() {
        writes.extend(vacate(
            elf,
            &blocks,
            reuse.is_none(),
            room_interp,
            room_strtab,
            table.len() as u64,
        ));
        writes.push(Write {
            offset: elf.phoff,
            bytes: table,
        });
    } else {
        writes.push(Write {
            offset: c.ehdr_phoff(),
            bytes: c.word(table_at),
        });
    }
    writes.push(Write {
        offset: c.ehdr_phnum(),
        bytes: c.u16(segments.len() as u16).to_vec(),
    });
    let shoff = shift(elf.shoff).ok_or_else(|| {
        ElfError::malformed("the section header table would run past the end of the address space")
    })?;
    if elf.shoff != 0 && shoff != elf.shoff {
        writes.push(Write {
            offset: c.ehdr_shoff(),
            bytes: c.word(shoff),
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
    let moved = MovedSections {
        strtab: layout.strtab.zip(strtab.as_ref().map(Vec::len)),
        dynamic: layout.dynamic.map(|at| (at, dyn_count * c.dyn_size())),
        interp: layout.interp.zip(interp.as_ref().map(|i| i.len() + 1)),
    };
    writes.extend(section_header_writes(
        elf, &layout, &moved, &relocate, &shift,
    )?);

    let len = tail.map_or(layout.offset + layout.len, |t| t.to + t.len);
    Ok(Rewrite {
        keep: cut,
        tail,
        writes,
        len,
    })
}

/// The virtual address of a program header table staying in place.
fn table_at_vaddr(elf: &Elf, layout: &Layout) -> Option<u64> {
    match layout.phdrs {
        Some(at) => Some(layout.vaddr_of(at)),
        None => elf
            .segments
            .iter()
            .find(|s| s.p_type == PT_PHDR)
            .map(|s| s.vaddr),
    }
}

/// Finds the blocks after the program header table that, moved to the region, free room for
/// one more entry. `None` when something that cannot move is in the way.
fn room_after_table(elf: &Elf) -> Option<TablePlace> {
    let c = elf.codec();
    let phsize = c.phdr_size() as u64;
    let table_end = elf.phoff + elf.segments.len() as u64 * phsize;
    let need_end = table_end + phsize;
    let first_load = elf
        .load_segments()
        .find(|s| s.offset <= elf.phoff && table_end <= s.offset + s.filesz)?;
    if need_end > first_load.offset + first_load.filesz {
        return None;
    }
    let mut moved = Vec::new();
    let (mut moves_interp, mut moves_strtab) = (false, false);
    let mut end = table_end;
    for item in contents_after(elf, table_end) {
        // Content overlapping the table or other content leaves no layout to trust.
        if item.offset < end {
            return None;
        }
        end = item.offset + item.len;
        if item.offset >= need_end {
            continue;
        }
        match item.kind {
            Content::Fixed => return None,
            Content::Interp => moves_interp = true,
            Content::StrTab => moves_strtab = true,
            Content::Movable(align) => moved.push(Block {
                offset: item.offset,
                len: item.len,
                align,
            }),
        }
    }
    Some(TablePlace::InPlace {
        moved,
        moves_interp,
        moves_strtab,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Interp,
    StrTab,
    Movable(u64),
    Fixed,
}

#[derive(Debug, Clone, Copy)]
struct Item {
    offset: u64,
    len: u64,
    kind: Content,
}

/// What lies in the file from `from` on, as far as headers tell, in file order. Sections are
/// the fullest account; program headers and dynamic tags cover files without them.
fn contents_after(elf: &Elf, from: u64) -> Vec<Item> {
    let mut items = Vec::new();
    let strtab_at = elf.strtab.as_ref().map(|t| t.offset);
    let interp_at = elf.interp_segment().map(|s| s.offset);
    let table_offsets: Vec<u64> = MOVABLE_TABLE_TAGS
        .iter()
        .filter_map(|&t| elf.dyn_value(t))
        .filter_map(|v| elf.vaddr_to_offset(v))
        .collect();
    let notes: Vec<&Segment> = elf
        .segments
        .iter()
        .filter(|s| s.p_type == PT_NOTE)
        .collect();
    let kind_at = |offset: u64, align: u64| {
        if Some(offset) == interp_at {
            Content::Interp
        } else if Some(offset) == strtab_at {
            Content::StrTab
        } else if table_offsets.contains(&offset) {
            Content::Movable(align.max(1))
        } else {
            Content::Fixed
        }
    };
    for note in &notes {
        items.push(Item {
            offset: note.offset,
            len: note.filesz,
            // Notes are 4- or 8-aligned; a larger p_align is not one to keep.
            kind: Content::Movable(note.align.clamp(4, 64)),
        });
    }
    for s in elf
        .sections
        .iter()
        .filter(|s| s.flags & SHF_ALLOC != 0 && s.sh_type != SHT_NOBITS)
    {
        let in_note = s.sh_type == SHT_NOTE
            && notes
                .iter()
                .any(|n| s.offset >= n.offset && s.offset + s.size <= n.offset + n.filesz);
        if !in_note && s.size > 0 {
            items.push(Item {
                offset: s.offset,
                len: s.size,
                kind: kind_at(s.offset, 8),
            });
        }
    }
    // What the loader reads, where no section header says what lies there: headers can lie.
    let dyn_size = elf.codec().dyn_size() as u64;
    let loader_items = [
        elf.interp_segment()
            .map(|s| (s.offset, s.filesz, Content::Interp)),
        elf.dynamic
            .as_ref()
            .map(|d| (d.offset, d.capacity as u64 * dyn_size, Content::Fixed)),
        elf.strtab
            .as_ref()
            .filter(|_| !elf.sections.is_empty())
            .map(|t| (t.offset, t.bytes.len() as u64, Content::StrTab)),
    ];
    for (offset, len, kind) in loader_items.into_iter().flatten() {
        // Something else at the same place (a note where the interpreter is) is an overlap,
        // which leaves the table no room to take.
        if !items.iter().any(|i| i.offset == offset && i.kind == kind) {
            items.push(Item { offset, len, kind });
        }
    }
    // The version tables the loader reads, where no section describes them: their entries say
    // where they lie, but nothing says they may move.
    for (offset, len) in elf.version_table_spans() {
        let described = elf.sections.iter().any(|s| {
            s.flags & SHF_ALLOC != 0
                && s.sh_type != SHT_NOBITS
                && s.offset <= offset
                && offset + len <= s.offset.saturating_add(s.size)
        });
        if !described {
            items.push(Item {
                offset,
                len,
                kind: Content::Fixed,
            });
        }
    }
    if elf.sections.is_empty() {
        // Without section headers a table's size is unknown, so none of them can move.
        for &offset in table_offsets.iter().chain(strtab_at.iter()) {
            items.push(Item {
                offset,
                len: 0,
                kind: Content::Fixed,
            });
        }
    }
    items.retain(|i| i.offset + i.len > from);
    items.sort_by_key(|i| (i.offset, i.len));
    items
}

/// Zeroes what moved out of the way of the program header table, before the table grows over
/// the start of it.
fn vacate(
    elf: &Elf,
    blocks: &[Block],
    fresh: bool,
    interp: bool,
    strtab: bool,
    table_len: u64,
) -> Vec<Write> {
    if !fresh {
        return Vec::new();
    }
    let mut ranges: Vec<(u64, u64)> = blocks.iter().map(|b| (b.offset, b.len)).collect();
    if interp && let Some(seg) = elf.interp_segment() {
        ranges.push((seg.offset, seg.filesz));
    }
    if strtab && let Some(t) = elf.strtab.as_ref() {
        ranges.push((t.offset, t.bytes.len() as u64));
    }
    let table_end = elf.phoff + table_len;
    ranges
        .into_iter()
        .filter_map(|(offset, len)| {
            let start = offset.max(table_end);
            (start < offset + len).then(|| Write {
                offset: start,
                bytes: vec![0; (offset + len - start) as usize],
            })
        })
        .collect()
}

/// Moves pointers into moved blocks along with them.
struct Relocation {
    moves: Vec<(u64, u64, u64, i128, i128)>,
}

impl Relocation {
    fn new(elf: &Elf, blocks: &[Block], layout: &Layout) -> Relocation {
        let mut dst = layout.blocks;
        let mut moves = Vec::new();
        for b in blocks {
            dst = align_up(dst, b.align);
            let src_vaddr = offset_to_vaddr(elf, b.offset).unwrap_or(0);
            let off_delta = i128::from(dst) - i128::from(b.offset);
            let vaddr_delta = i128::from(layout.vaddr_of(dst)) - i128::from(src_vaddr);
            moves.push((b.offset, b.len, src_vaddr, off_delta, vaddr_delta));
            dst += b.len;
        }
        Relocation { moves }
    }

    fn by_offset(&self, offset: u64, len: u64) -> Option<(i128, i128)> {
        self.moves
            .iter()
            .find(|m| offset >= m.0 && offset.saturating_add(len) <= m.0 + m.1 && m.1 > 0)
            .map(|m| (m.3, m.4))
    }

    fn vaddr(&self, vaddr: u64) -> Option<u64> {
        self.moves
            .iter()
            .find(|m| vaddr >= m.2 && vaddr < m.2 + m.1)
            .map(|m| (i128::from(vaddr) + m.4) as u64)
    }

    fn offset(&self, offset: u64) -> Option<u64> {
        self.by_offset(offset, 1)
            .map(|(d, _)| (i128::from(offset) + d) as u64)
    }

    fn segment(&self, seg: &mut Segment) {
        if seg.is_load() || seg.filesz == 0 {
            return;
        }
        if let Some((off, va)) = self.by_offset(seg.offset, seg.filesz) {
            seg.offset = (i128::from(seg.offset) + off) as u64;
            seg.vaddr = (i128::from(seg.vaddr) + va) as u64;
            seg.paddr = (i128::from(seg.paddr) + va) as u64;
        }
    }

    fn dynamic_entries(&self, entries: &mut [DynEntry]) {
        for e in entries
            .iter_mut()
            .filter(|e| MOVABLE_TABLE_TAGS.contains(&e.tag) && e.tag != DT_STRTAB)
        {
            if let Some(v) = self.vaddr(e.val) {
                e.val = v;
            }
        }
    }
}

fn offset_to_vaddr(elf: &Elf, offset: u64) -> Option<u64> {
    elf.load_segments()
        .find(|s| offset >= s.offset && offset < s.offset + s.filesz)
        .map(|s| s.vaddr + (offset - s.offset))
}

#[allow(clippy::too_many_arguments)]
fn fill_region(
    elf: &Elf,
    layout: &Layout,
    segments: &[Segment],
    blocks: &[Block],
    base_strsz: u64,
    entries: &[DynEntry],
    dyn_count: usize,
    interp: Option<&[u8]>,
    strtab: Option<&[u8]>,
) -> Vec<u8> {
    let c = elf.codec();
    let mut region = vec![0u8; layout.len as usize];
    let mut put = |at: u64, bytes: &[u8]| {
        let rel = (at - layout.offset) as usize;
        region[rel..rel + bytes.len()].copy_from_slice(bytes);
    };
    if let Some(at) = layout.phdrs {
        put(
            at,
            &segments.iter().flat_map(|s| c.phdr(s)).collect::<Vec<u8>>(),
        );
    }
    put(layout.marker, &marker(base_strsz, layout.blocks_len));
    let mut at = layout.blocks;
    for b in blocks {
        at = align_up(at, b.align);
        put(at, slice(elf.data, b.offset, b.len).unwrap_or_default());
        at += b.len;
    }
    if let Some(at) = layout.dynamic {
        let table: Vec<u8> = entries
            .iter()
            .flat_map(|e| c.dyn_entry(e.tag, e.val))
            .chain(std::iter::repeat_n(
                0,
                (dyn_count - entries.len()) * c.dyn_size(),
            ))
            .collect();
        put(at, &table);
    }
    if let (Some(at), Some(s)) = (layout.interp, interp) {
        put(at, s);
    }
    if let (Some(at), Some(bytes)) = (layout.strtab, strtab) {
        put(at, bytes);
    }
    region
}

/// Field writes into a moved block land in its copy in the region; the others stay as they are.
fn apply_field_writes(
    mut region: Vec<u8>,
    layout: &Layout,
    relocate: &Relocation,
    writes: &[Write],
) -> (Vec<u8>, Vec<Write>) {
    let mut rest = Vec::new();
    for w in writes {
        match relocate.offset(w.offset) {
            Some(at) => {
                let rel = (at - layout.offset) as usize;
                region[rel..rel + w.bytes.len()].copy_from_slice(&w.bytes);
            }
            None => rest.push(w.clone()),
        }
    }
    (region, rest)
}

fn marker(base_strsz: u64, blocks_len: u64) -> Vec<u8> {
    let mut m = MAGIC.to_vec();
    m.extend(base_strsz.to_le_bytes());
    m.extend(blocks_len.to_le_bytes());
    m.resize(MARKER_LEN as usize, 0);
    m
}

fn align_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align.max(1)) * align.max(1)
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
    phnum: Option<usize>,
    blocks: &[Block],
    dyn_count: Option<usize>,
    interp_len: Option<usize>,
    strtab_len: Option<usize>,
) -> Option<Layout> {
    let word = c.word_size() as u64;
    let offset = align_up(cut, 16);
    // The address keeps the offset's remainder modulo the page, as mmap requires, and starts on
    // a page of its own above everything loaded before: `None` when that passes the top.
    let vaddr = vaddr_end
        .div_ceil(page)
        .checked_mul(page)?
        .checked_add(offset % page)?;
    let phdrs = phnum.map(|_| offset);
    let marker = offset + phnum.map_or(0, |n| (n * c.phdr_size()) as u64);
    let mut cursor = Cursor(marker + MARKER_LEN);
    let blocks_start = cursor.0;
    for b in blocks {
        cursor.take(b.len, b.align);
    }
    let blocks_len = cursor.0 - blocks_start;
    let dynamic = dyn_count.map(|n| cursor.take((n * c.dyn_size()) as u64, word));
    let interp = interp_len.map(|n| cursor.take(n as u64 + 1, 1));
    let strtab = strtab_len.map(|n| cursor.take(n as u64, 1));
    let end = cursor.0;
    vaddr.checked_add(end - offset)?;
    Some(Layout {
        offset,
        vaddr,
        phdrs,
        marker,
        blocks: blocks_start,
        blocks_len,
        dynamic,
        interp,
        strtab,
        len: end - offset,
    })
}

/// The end of what has been laid out so far.
struct Cursor(u64);

impl Cursor {
    fn take(&mut self, len: u64, align: u64) -> u64 {
        let at = align_up(self.0, align);
        self.0 = at + len;
        at
    }
}

/// Points the first segment of `p_type` at `at`.
fn place_segment(segments: &mut [Segment], p_type: u32, at: u64, vaddr: Option<u64>, len: u64) {
    let (Some(vaddr), Some(seg)) = (vaddr, segments.iter_mut().find(|s| s.p_type == p_type)) else {
        return;
    };
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

/// Sections whose content was rebuilt in the region: (offset, length).
struct MovedSections {
    strtab: Option<(u64, usize)>,
    dynamic: Option<(u64, usize)>,
    interp: Option<(u64, usize)>,
}

fn section_header_writes(
    elf: &Elf,
    layout: &Layout,
    moved: &MovedSections,
    relocate: &Relocation,
    shift: &dyn Fn(u64) -> Option<u64>,
) -> Result<Vec<Write>, ElfError> {
    let c = elf.codec();
    let old_strtab = elf.strtab.as_ref().map(|t| t.vaddr);
    let old_interp = elf.interp_segment().map(|s| s.vaddr);
    let mut writes = Vec::new();
    for s in &elf.sections {
        let past_top = || {
            ElfError::malformed(format!(
                "section {} would run past the end of the address space once moved",
                s.index
            ))
        };
        let rebuilt = if s.addr != 0 && s.sh_type == SHT_STRTAB && Some(s.addr) == old_strtab {
            moved.strtab
        } else if s.sh_type == SHT_DYNAMIC {
            moved.dynamic
        } else if s.addr != 0 && s.sh_type == SHT_PROGBITS && Some(s.addr) == old_interp {
            moved.interp
        } else {
            None
        };
        let placed = match (rebuilt, relocate.by_offset(s.offset, s.size.max(1))) {
            (Some((at, len)), _) => (layout.vaddr_of(at), at, len as u64),
            (None, Some((off, va))) if s.flags & SHF_ALLOC != 0 => (
                (i128::from(s.addr) + va) as u64,
                (i128::from(s.offset) + off) as u64,
                s.size,
            ),
            _ => (s.addr, shift(s.offset).ok_or_else(past_top)?, s.size),
        };
        // A size that reaches the top of the address space from the old place may pass it from
        // the new one, and no reader accepts that.
        if placed.0.checked_add(placed.2).is_none() || placed.1.checked_add(placed.2).is_none() {
            return Err(past_top());
        }
        let header_offset = shift(s.header_offset).ok_or_else(past_top)?;
        if placed != (s.addr, s.offset, s.size) || header_offset != s.header_offset {
            writes.push(Write {
                offset: header_offset + c.shdr_addr(),
                bytes: c.shdr_placement(placed.0, placed.1, placed.2),
            });
        }
    }
    Ok(writes)
}
