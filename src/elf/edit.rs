//! What to change, and the plan that changes it: in place when the new values fit, otherwise
//! through a growth region (see `region`).

use super::error::ElfError;
use super::read::{
    DT_NEEDED, DT_NULL, DT_RPATH, DT_RUNPATH, DT_SONAME, DT_STRSZ, DT_STRTAB, DynEntry, Elf,
    RunPathKind, STRING_TAGS, VersionNeed,
};
use super::region::{self, Growth};
use super::rewrite::{Rewrite, Write};
use super::strings::{self, Placement, Request};

const SHT_NOBITS: u32 = 8;
const SHF_ALLOC: u64 = 2;

/// A change to the run path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunPathEdit {
    Set(Vec<u8>),
    Remove,
}

/// Everything to change in one file. All of it is applied in a single rewrite.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    pub interpreter: Option<Vec<u8>>,
    pub run_path: Option<RunPathEdit>,
    /// Converts the tag holding the run path (`--force-rpath` / `--force-runpath`); a run path
    /// added where none was uses this tag, else `DT_RUNPATH`.
    pub run_path_kind: Option<RunPathKind>,
    pub remove_needed: Vec<Vec<u8>>,
    pub replace_needed: Vec<(Vec<u8>, Vec<u8>)>,
    pub add_needed: Vec<Vec<u8>>,
    pub soname: Option<Vec<u8>>,
}

impl Edits {
    fn touches_dynamic(&self) -> bool {
        self.run_path.is_some()
            || self.run_path_kind.is_some()
            || !self.remove_needed.is_empty()
            || !self.replace_needed.is_empty()
            || !self.add_needed.is_empty()
            || self.soname.is_some()
    }
}

/// A dynamic entry after the edit. String entries carry the string they must point at.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub tag: i64,
    pub val: u64,
    pub string: Option<Vec<u8>>,
    /// The string offset this entry had before the edit, for entries that already existed.
    pub origin: Option<u64>,
}

/// A `vn_file` field of the version needs that must follow a renamed library.
#[derive(Debug, Clone)]
struct FieldString {
    field_offset: u64,
    old: u64,
    string: Vec<u8>,
}

/// Plans `edits` on `elf`. `Ok(None)` means the file already is as asked.
pub fn plan(elf: &Elf, edits: &Edits) -> Result<Option<Rewrite>, ElfError> {
    check_applicable(elf, edits)?;
    let mut slots = desired_slots(elf, edits);
    let mut fields = vn_file_updates(elf, edits);
    let interp = edits
        .interpreter
        .as_ref()
        .filter(|new| elf.interpreter() != Some(new.as_slice()));
    if !slots_changed(elf, &slots) && fields.is_empty() && interp.is_none() {
        return Ok(None);
    }

    let growth_region = region::find(elf);
    let table_len = elf.strtab.as_ref().map_or(0, |t| t.bytes.len());
    let mut base_len = table_len;
    let mut placement = place_strings(elf, base_len, &mut slots, &fields);
    let region_base = growth_region.as_ref().and_then(|r| r.strtab_base(elf));
    if let Some(region_base) =
        region_base.filter(|_| placement.as_ref().is_some_and(|p| p.appended))
    {
        // The table is rebuilt from its pre-growth part, so what earlier edits appended and is
        // still in use is appended again, and nothing accumulates.
        base_len = region_base.min(table_len);
        names_past_base(elf, base_len as u64)?;
        carry_appended(elf, base_len as u64, &mut slots, &mut fields);
        placement = place_strings(elf, base_len, &mut slots, &fields);
    }
    let placement = erase_unused(elf, &slots, &fields, placement, base_len);
    let entries: Vec<DynEntry> = slots
        .iter()
        .map(|s| DynEntry {
            tag: s.tag,
            val: s.val,
        })
        .collect();
    let interp_fits = interp.is_none_or(|new| {
        elf.interp_segment()
            .is_some_and(|seg| new.len() < seg.filesz as usize)
    });
    let capacity = elf.dynamic.as_ref().map_or(0, |d| d.capacity);
    let dynamic_fits = entries.len() < capacity;
    let table_moves = placement.as_ref().is_some_and(|p| p.appended);
    let fields = field_writes(elf, &fields, placement.as_ref());
    if table_moves || !interp_fits || !dynamic_fits {
        let growth = Growth {
            interpreter: interp.cloned(),
            entries,
            placement,
            base_len,
            field_writes: fields,
            move_dynamic: !dynamic_fits,
            move_interp: !interp_fits,
        };
        return region::grow(elf, growth_region, growth).map(Some);
    }

    let mut writes = placement.map_or_else(Vec::new, |p| overwrites_in_place(elf, &p));
    writes.extend(fields);
    if let Some(new) = interp {
        writes.push(interp_in_place(elf, new));
    }
    writes.extend(dynamic_in_place(elf, &entries));
    let len = elf.data.len() as u64;
    Ok(Some(Rewrite {
        keep: len,
        tail: None,
        writes,
        len,
    }))
}

fn check_applicable(elf: &Elf, edits: &Edits) -> Result<(), ElfError> {
    // The loader refuses such segments too; moving or growing around them would go wrong.
    if elf.load_segments().any(|s| s.filesz > s.memsz) {
        return Err(ElfError::malformed(
            "a PT_LOAD holds more file bytes than memory",
        ));
    }
    let len = elf.data.len() as u64;
    let past_end = elf.segments.iter().any(|s| s.offset + s.filesz > len)
        || elf.sections.iter().any(|s| {
            s.flags & SHF_ALLOC != 0 && s.sh_type != SHT_NOBITS && s.offset + s.size > len
        });
    if past_end {
        return Err(ElfError::malformed(
            "a segment or loaded section runs past the end of the file",
        ));
    }
    let version_spans = elf.version_table_spans();
    if structures_overlap(elf, &version_spans) {
        return Err(ElfError::malformed(
            "the headers, interpreter, dynamic section, string table, symbol versions or section headers overlap",
        ));
    }
    if elf.version_entries_overlap() {
        return Err(ElfError::malformed(
            "records of the symbol version tables overlap one another",
        ));
    }
    if region::find(elf).is_some_and(|r| version_spans.iter().any(|&s| r.rebuilt_part_meets(s))) {
        return Err(ElfError::malformed(
            "the symbol versions lie in the part of the growth region an edit rebuilds",
        ));
    }
    if edits.interpreter.is_some() && elf.interp_segment().is_none() {
        return Err(ElfError::Refused(
            "has no interpreter to set (a shared library or a static executable)".into(),
        ));
    }
    if edits.touches_dynamic() && elf.dynamic.is_none() {
        return Err(ElfError::Refused(
            "has no dynamic section (statically linked)".into(),
        ));
    }
    if edits.touches_dynamic() && elf.strtab.is_none() {
        return Err(ElfError::malformed(
            "the dynamic section has no string table",
        ));
    }
    if matches!(edits.run_path, Some(RunPathEdit::Set(_))) && elf.relocates_itself() {
        return Err(ElfError::Refused(
            "relocates itself (the dynamic loader, or a static-pie program), and glibc stops \
             such a file at start when it has a run path"
                .into(),
        ));
    }
    refuse_removing_versioned(elf, edits)
}

/// Refuses to remove a needed library the file needs symbol versions from: the loader finds
/// no object for the version need and stops.
fn refuse_removing_versioned(elf: &Elf, edits: &Edits) -> Result<(), ElfError> {
    let Some(strtab) = elf.strtab.as_ref() else {
        return Ok(());
    };
    let versioned = elf.version_needs().into_iter().find(|need| {
        strtab.get(need.file_string).is_some_and(|file| {
            edits.remove_needed.iter().any(|r| r == file)
                && !edits.add_needed.iter().any(|a| a == file)
        })
    });
    match versioned {
        Some(need) => Err(ElfError::Refused(format!(
            "needs symbol versions ({}) from {}, so that library cannot be removed: the loader \
             would stop on the version need; relink without it instead",
            need.versions.join(", "),
            need.file
        ))),
        None => Ok(()),
    }
}

/// Whether the ranges an edit may write in place overlap, as in no well-formed file: writing
/// one would clobber another.
fn structures_overlap(elf: &Elf, version_spans: &[(u64, u64)]) -> bool {
    let c = elf.codec();
    let mut ranges = vec![
        (0, c.ehdr_size() as u64),
        (elf.phoff, (elf.segments.len() * c.phdr_size()) as u64),
    ];
    ranges.extend(elf.interp_segment().map(|s| (s.offset, s.filesz)));
    ranges.extend(
        elf.dynamic
            .as_ref()
            .map(|d| (d.offset, (d.capacity * c.dyn_size()) as u64)),
    );
    ranges.extend(
        elf.strtab
            .as_ref()
            .map(|t| (t.offset, t.bytes.len() as u64)),
    );
    // The editor reads the names they hold and renames `vn_file`.
    ranges.extend_from_slice(version_spans);
    // Growth rewrites the placement of moved sections in their headers.
    ranges.extend(elf.sections.last().map(|last| {
        let end = last.header_offset.saturating_add(c.shdr_size() as u64);
        (elf.shoff, end.saturating_sub(elf.shoff))
    }));
    ranges.retain(|r| r.1 > 0);
    ranges
        .iter()
        .enumerate()
        .any(|(i, &a)| ranges[i + 1..].iter().any(|&b| spans_meet(a, b)))
}

/// Whether two (offset, length) spans share a byte.
pub(crate) fn spans_meet(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// The dynamic entries as the edit wants them, strings not yet placed.
fn desired_slots(elf: &Elf, edits: &Edits) -> Vec<Slot> {
    let strtab = elf.strtab.as_ref();
    let mut slots: Vec<Slot> = elf
        .dynamic_entries()
        .iter()
        .map(|e| {
            let current = STRING_TAGS
                .contains(&e.tag)
                .then(|| strtab.and_then(|t| t.get(e.val)))
                .flatten();
            Slot {
                tag: e.tag,
                val: e.val,
                string: None,
                origin: current.map(|_| e.val),
            }
        })
        .collect();
    let text = |s: &Slot| {
        s.string
            .clone()
            .or_else(|| strtab?.get(s.val).map(<[u8]>::to_vec))
    };

    edit_needed(&mut slots, edits, &text);
    edit_run_path(&mut slots, edits, elf);
    if let Some(name) = &edits.soname {
        set_string_entry(&mut slots, DT_SONAME, name, &text);
    }
    slots
}

fn edit_needed(slots: &mut Vec<Slot>, edits: &Edits, text: &dyn Fn(&Slot) -> Option<Vec<u8>>) {
    slots.retain(|s| {
        s.tag != DT_NEEDED || !text(s).is_some_and(|n| edits.remove_needed.contains(&n))
    });
    for slot in slots.iter_mut().filter(|s| s.tag == DT_NEEDED) {
        let name = text(slot);
        if let Some((_, new)) = edits
            .replace_needed
            .iter()
            .find(|(old, _)| Some(old) == name.as_ref())
            && name.as_ref() != Some(new)
        {
            slot.string = Some(new.clone());
        }
    }
    let present: Vec<Vec<u8>> = slots
        .iter()
        .filter(|s| s.tag == DT_NEEDED)
        .filter_map(text)
        .collect();
    let mut added = Vec::new();
    for name in &edits.add_needed {
        if !present.contains(name) && !added.iter().any(|s: &Slot| s.string.as_ref() == Some(name))
        {
            added.push(Slot {
                tag: DT_NEEDED,
                val: 0,
                string: Some(name.clone()),
                origin: None,
            });
        }
    }
    // New libraries go first, ahead of the existing ones, as patchelf adds them.
    slots.splice(0..0, added);
}

fn edit_run_path(slots: &mut Vec<Slot>, edits: &Edits, elf: &Elf) {
    let is_run_path = |s: &Slot| s.tag == DT_RPATH || s.tag == DT_RUNPATH;
    match &edits.run_path {
        Some(RunPathEdit::Remove) => slots.retain(|s| !is_run_path(s)),
        Some(RunPathEdit::Set(path)) => {
            let current = elf.run_path().map(|(_, p)| p);
            let has_entry = slots.iter().any(is_run_path);
            for slot in slots.iter_mut().filter(|s| is_run_path(s)) {
                if current != Some(path.as_slice()) || slot.string.is_some() {
                    slot.string = Some(path.clone());
                }
            }
            if !has_entry {
                let kind = edits.run_path_kind.unwrap_or(RunPathKind::RunPath);
                slots.push(Slot {
                    tag: kind.tag(),
                    val: 0,
                    string: Some(path.clone()),
                    origin: None,
                });
            }
        }
        None => {}
    }
    if let Some(kind) = edits.run_path_kind {
        for slot in slots.iter_mut().filter(|s| is_run_path(s)) {
            slot.tag = kind.tag();
        }
        // Two entries of one kind would be redundant; keep the first.
        let mut seen = false;
        slots.retain(|s| !is_run_path(s) || !std::mem::replace(&mut seen, true));
    }
}

fn set_string_entry(
    slots: &mut Vec<Slot>,
    tag: i64,
    value: &[u8],
    text: &dyn Fn(&Slot) -> Option<Vec<u8>>,
) {
    match slots.iter_mut().find(|s| s.tag == tag) {
        Some(slot) if text(slot).as_deref() != Some(value) => slot.string = Some(value.to_vec()),
        Some(_) => {}
        None => slots.push(Slot {
            tag,
            val: 0,
            string: Some(value.to_vec()),
            origin: None,
        }),
    }
}

/// Version needs name the library they come from; a replaced library's entry follows it.
fn vn_file_updates(elf: &Elf, edits: &Edits) -> Vec<FieldString> {
    elf.version_needs()
        .into_iter()
        .filter_map(|need| {
            let (_, new) = edits
                .replace_needed
                .iter()
                .find(|(old, new)| old.as_slice() == need.file.as_bytes() && old != new)?;
            Some(FieldString {
                field_offset: need.file_field_offset,
                old: need.file_string,
                string: new.clone(),
            })
        })
        .collect()
}

/// Refuses a rebuild of the string table from its first `base_len` bytes when a version name or
/// a symbol name lies past them: edits never append one, so the rebuilt table would lose it.
fn names_past_base(elf: &Elf, base_len: u64) -> Result<(), ElfError> {
    if elf.version_name_strings().iter().any(|&at| at >= base_len) {
        return Err(ElfError::malformed(
            "symbol version names lie past the string table the growth region was made from",
        ));
    }
    match elf.symbol_name_strings() {
        Some(names) if names.iter().all(|&at| at < base_len) => Ok(()),
        Some(_) => Err(ElfError::malformed(
            "symbol names lie past the string table the growth region was made from",
        )),
        None => Err(ElfError::malformed(
            "the number of dynamic symbols cannot be told (no readable hash table or section \
             header), so the string table cannot be rebuilt without losing their names",
        )),
    }
}

/// Re-requests the strings past `base_len` that entries and version needs still point at.
fn carry_appended(elf: &Elf, base_len: u64, slots: &mut [Slot], fields: &mut Vec<FieldString>) {
    let Some(strtab) = elf.strtab.as_ref() else {
        return;
    };
    for slot in slots.iter_mut().filter(|s| s.string.is_none()) {
        if let Some(origin) = slot.origin.filter(|&o| o >= base_len) {
            slot.string = strtab.get(origin).map(<[u8]>::to_vec);
        }
    }
    for need in elf.version_needs() {
        let pending = fields
            .iter()
            .any(|f| f.field_offset == need.file_field_offset);
        if need.file_string >= base_len && !pending {
            fields.push(FieldString {
                field_offset: need.file_field_offset,
                old: need.file_string,
                string: need.file.into_bytes(),
            });
        }
    }
}

fn slots_changed(elf: &Elf, slots: &[Slot]) -> bool {
    let old = elf.dynamic_entries();
    slots.len() != old.len()
        || slots
            .iter()
            .zip(old)
            .any(|(s, e)| s.string.is_some() || s.tag != e.tag || s.val != e.val)
}

/// Gives every slot that wants a string its offset; `None` when no string moves.
fn place_strings(
    elf: &Elf,
    base_len: usize,
    slots: &mut [Slot],
    fields: &[FieldString],
) -> Option<strings::Placement> {
    let strtab = elf.strtab.as_ref()?;
    let mut requests: Vec<Request> = Vec::new();
    let wanted: Vec<usize> = (0..slots.len())
        .filter(|&i| slots[i].string.is_some())
        .collect();
    for &i in &wanted {
        requests.push(Request {
            old: slots[i].origin.filter(|&v| v < base_len as u64),
            string: slots[i].string.clone().unwrap_or_default(),
        });
    }
    requests.extend(fields.iter().map(|f| Request {
        old: Some(f.old).filter(|&v| v < base_len as u64),
        string: f.string.clone(),
    }));
    if requests.is_empty() {
        return None;
    }
    let placement = strings::place(strtab, base_len, &requests, || elf.string_references());
    for (k, &i) in wanted.iter().enumerate() {
        slots[i].val = placement.offsets[k];
    }
    Some(placement)
}

/// Zeroes the strings the edit leaves unused (old values of entries it changed or removed)
/// where nothing still points at or into them: an old run path would otherwise stay in the
/// file, and Nix's reference scan would still find the store paths it names. Nothing is erased
/// when the symbols' names cannot all be known.
fn erase_unused(
    elf: &Elf,
    slots: &[Slot],
    fields: &[FieldString],
    placement: Option<Placement>,
    base_len: usize,
) -> Option<Placement> {
    let Some(strtab) = elf.strtab.as_ref() else {
        return placement;
    };
    let needs = elf.version_needs();
    let mut live = final_string_offsets(&needs, slots, fields, placement.as_ref());
    let old_files = needs.iter().map(|n| n.file_string);
    let mut unused: Vec<u64> = elf
        .dynamic_entries()
        .iter()
        .filter(|e| STRING_TAGS.contains(&e.tag))
        .map(|e| e.val)
        .chain(old_files)
        .filter(|at| (*at as usize) < base_len && !live.contains(at))
        .collect();
    unused.sort_unstable();
    unused.dedup();
    if unused.is_empty() {
        return placement;
    }
    let Some(symbols) = elf.symbol_name_strings() else {
        return placement;
    };
    live.extend(elf.version_name_strings());
    live.extend(symbols);
    let mut placement = placement.unwrap_or_else(|| Placement {
        table: strtab.bytes[..base_len].to_vec(),
        ..Placement::default()
    });
    for at in unused {
        let len = strtab.get(at).map_or(0, <[u8]>::len);
        for (start, len) in strings::unshared_runs(&placement.table, at, len, &live) {
            placement.table[start..start + len].fill(0);
            placement.overwrites.push((start as u64, vec![0; len]));
        }
    }
    Some(placement)
}

/// The string offsets the dynamic entries and `vn_file` fields hold after the edit.
fn final_string_offsets(
    needs: &[VersionNeed],
    slots: &[Slot],
    fields: &[FieldString],
    placement: Option<&Placement>,
) -> Vec<u64> {
    let placed_fields = placement.map_or(&[][..], |p| &p.offsets[p.offsets.len() - fields.len()..]);
    let files = needs.iter().map(|need| {
        fields
            .iter()
            .position(|f| f.field_offset == need.file_field_offset)
            .and_then(|k| placed_fields.get(k).copied())
            .unwrap_or(need.file_string)
    });
    slots
        .iter()
        .filter(|s| STRING_TAGS.contains(&s.tag))
        .map(|s| s.val)
        .chain(files)
        .collect()
}

/// Writes of the `vn_file` fields; their offsets come after the slots' in the placement.
fn field_writes(
    elf: &Elf,
    fields: &[FieldString],
    placement: Option<&strings::Placement>,
) -> Vec<Write> {
    let Some(p) = placement else {
        return Vec::new();
    };
    let first = p.offsets.len() - fields.len();
    let c = elf.codec();
    fields
        .iter()
        .zip(&p.offsets[first..])
        .filter(|(f, at)| f.old != **at)
        .map(|(f, &at)| Write {
            offset: f.field_offset,
            bytes: c.u32(at as u32).to_vec(),
        })
        .collect()
}

/// Strings overwritten where the table lies now.
pub(crate) fn overwrites_in_place(elf: &Elf, placement: &strings::Placement) -> Vec<Write> {
    let table_offset = elf.strtab.as_ref().map_or(0, |t| t.offset);
    placement
        .overwrites
        .iter()
        .map(|(at, bytes)| Write {
            offset: table_offset + at,
            bytes: bytes.clone(),
        })
        .collect()
}

pub(crate) fn interp_in_place(elf: &Elf, new: &[u8]) -> Write {
    let seg = elf.interp_segment().expect("checked by check_applicable");
    let mut bytes = new.to_vec();
    bytes.resize(seg.filesz as usize, 0);
    Write {
        offset: seg.offset,
        bytes,
    }
}

/// One write per dynamic entry that changes, `DT_NULL` filling slots that fell empty.
pub(crate) fn dynamic_in_place(elf: &Elf, entries: &[DynEntry]) -> Vec<Write> {
    let Some(dynamic) = &elf.dynamic else {
        return Vec::new();
    };
    let c = elf.codec();
    let size = c.dyn_size() as u64;
    let old = &dynamic.entries;
    let span = entries.len().max(old.len()) + 1;
    (0..span.min(dynamic.capacity))
        .filter_map(|i| {
            let new = entries.get(i).copied().unwrap_or(DynEntry {
                tag: DT_NULL,
                val: 0,
            });
            // Past the old terminator the slots are unknown, so they are always written.
            (i >= old.len() || new != old[i]).then(|| Write {
                offset: dynamic.offset + i as u64 * size,
                bytes: c.dyn_entry(new.tag, new.val),
            })
        })
        .collect()
}

/// Dynamic tags whose values the growth must set to the moved string table.
pub(crate) fn set_strtab(entries: &mut [DynEntry], vaddr: u64, size: u64) {
    for e in entries.iter_mut() {
        match e.tag {
            DT_STRTAB => e.val = vaddr,
            DT_STRSZ => e.val = size,
            _ => {}
        }
    }
}
