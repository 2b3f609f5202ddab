//! Zero-copy reading of the parts of an ELF file the editor and the loader care about.

use object::Endianness;
use object::elf::{FileHeader32, FileHeader64};
use object::read::elf::{
    FileHeader, GnuHashTable, HashTable, ProgramHeader as _, SectionHeader as _,
};

use super::codec::Codec;
use super::error::ElfError;

pub(crate) const PT_LOAD: u32 = 1;
pub(crate) const PT_DYNAMIC: u32 = 2;
pub(crate) const PT_INTERP: u32 = 3;
pub(crate) const PT_PHDR: u32 = 6;
pub(crate) const PF_W: u32 = 2;
pub(crate) const PF_R: u32 = 4;

pub(crate) const DT_NULL: i64 = 0;
pub(crate) const DT_NEEDED: i64 = 1;
pub(crate) const DT_HASH: i64 = 4;
pub(crate) const DT_STRTAB: i64 = 5;
pub(crate) const DT_SYMTAB: i64 = 6;
pub(crate) const DT_STRSZ: i64 = 10;
pub(crate) const DT_SONAME: i64 = 14;
pub(crate) const DT_RPATH: i64 = 15;
pub(crate) const DT_RUNPATH: i64 = 29;
pub(crate) const DT_GNU_HASH: i64 = 0x6fff_fef5;
pub(crate) const DT_VERDEF: i64 = 0x6fff_fffc;
const DT_VERDEFNUM: i64 = 0x6fff_fffd;
pub(crate) const DT_VERNEED: i64 = 0x6fff_fffe;
const DT_VERNEEDNUM: i64 = 0x6fff_ffff;
/// Dynamic tags whose value is an offset into the dynamic string table.
pub(crate) const STRING_TAGS: [i64; 9] = [
    DT_NEEDED,
    DT_SONAME,
    DT_RPATH,
    DT_RUNPATH,
    0x7fff_fffd, // DT_AUXILIARY
    0x7fff_ffff, // DT_FILTER
    0x6fff_fefa, // DT_CONFIG
    0x6fff_fefb, // DT_DEPAUDIT
    0x6fff_fefc, // DT_AUDIT
];

const SHT_NOBITS: u32 = 8;
const VER_FLG_WEAK: u16 = 2;
const SHT_DYNSYM: u32 = 11;

/// ELF class: the size of addresses and offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Class {
    Elf32,
    Elf64,
}

/// Which dynamic tag holds a run path. They differ in how the loader uses them: `DT_RPATH` also
/// serves the libraries an object loads, `DT_RUNPATH` only the object itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum RunPathKind {
    #[serde(rename = "RPATH")]
    RPath,
    #[serde(rename = "RUNPATH")]
    RunPath,
}

impl RunPathKind {
    pub(crate) fn tag(self) -> i64 {
        match self {
            RunPathKind::RPath => DT_RPATH,
            RunPathKind::RunPath => DT_RUNPATH,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RunPathKind::RPath => "RPATH",
            RunPathKind::RunPath => "RUNPATH",
        }
    }
}

/// One program header, widened to 64 bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub p_type: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

impl Segment {
    pub fn is_load(&self) -> bool {
        self.p_type == PT_LOAD
    }

    pub(crate) fn vaddr_end(&self) -> u64 {
        self.vaddr.saturating_add(self.memsz)
    }

    /// The file offset holding `vaddr`, when this segment maps it from the file.
    fn file_offset_of(&self, vaddr: u64) -> Option<u64> {
        let rel = vaddr.checked_sub(self.vaddr)?;
        (rel < self.filesz).then(|| self.offset + rel)
    }
}

/// One section header, widened to 64 bits.
#[derive(Debug, Clone)]
pub struct Section<'a> {
    pub index: usize,
    pub name: &'a [u8],
    pub sh_type: u32,
    pub flags: u64,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
    /// Where this header itself lies in the file.
    pub(crate) header_offset: u64,
}

/// One entry of the dynamic section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DynEntry {
    pub tag: i64,
    pub val: u64,
}

/// The dynamic section as the loader sees it (through `PT_DYNAMIC`).
#[derive(Debug, Clone)]
pub(crate) struct Dynamic {
    pub offset: u64,
    /// How many entries fit in the segment, including the terminating `DT_NULL`.
    pub capacity: usize,
    /// Entries before the first `DT_NULL`.
    pub entries: Vec<DynEntry>,
}

/// The dynamic string table.
#[derive(Debug, Clone)]
pub(crate) struct StrTab<'a> {
    pub vaddr: u64,
    pub offset: u64,
    pub bytes: &'a [u8],
}

impl<'a> StrTab<'a> {
    /// The NUL-terminated string at `offset`, without its NUL.
    pub fn get(&self, offset: u64) -> Option<&'a [u8]> {
        let rest = self.bytes.get(usize::try_from(offset).ok()?..)?;
        let len = rest.iter().position(|&b| b == 0)?;
        Some(&rest[..len])
    }
}

/// A library and the versions of it a file needs (`DT_VERNEED`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionNeed {
    pub file: String,
    pub versions: Vec<String>,
    /// File offset of this entry's `vn_file` field, so a rename of the library can follow.
    #[serde(skip)]
    pub(crate) file_field_offset: u64,
    #[serde(skip)]
    pub(crate) file_string: u64,
    #[serde(skip)]
    pub(crate) version_strings: Vec<u64>,
    /// Whether each of `versions` is a weak need (`VER_FLG_WEAK`): glibc only warns when the
    /// library lacks it.
    #[serde(skip)]
    pub weak: Vec<bool>,
}

/// A version a library defines (`DT_VERDEF`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionDef {
    pub name: String,
    /// The base definition names the library itself rather than a version.
    pub is_base: bool,
}

/// A parsed ELF file, borrowing its bytes.
#[derive(Debug, Clone)]
pub struct Elf<'a> {
    pub data: &'a [u8],
    pub class: Class,
    pub little_endian: bool,
    pub e_type: u16,
    /// The entry point (`e_entry`).
    pub entry: u64,
    pub machine: u16,
    pub os_abi: u8,
    pub phoff: u64,
    pub shoff: u64,
    pub segments: Vec<Segment>,
    pub sections: Vec<Section<'a>>,
    pub(crate) dynamic: Option<Dynamic>,
    pub(crate) strtab: Option<StrTab<'a>>,
    /// Index into `segments` of `PT_INTERP`.
    pub(crate) interp_segment: Option<usize>,
}

impl<'a> Elf<'a> {
    /// Parses the headers of `data`. Never panics; every offset is checked against the data.
    pub fn parse(data: &'a [u8]) -> Result<Elf<'a>, ElfError> {
        if data.len() < 16 || &data[..4] != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        match data[4] {
            1 => parse_class::<FileHeader32<Endianness>>(data, Class::Elf32),
            2 => parse_class::<FileHeader64<Endianness>>(data, Class::Elf64),
            other => Err(ElfError::malformed(format!("unknown ELF class {other}"))),
        }
    }

    pub(crate) fn codec(&self) -> Codec {
        Codec {
            class: self.class,
            little: self.little_endian,
        }
    }

    /// The program interpreter (`PT_INTERP`), without its terminating NUL.
    pub fn interpreter(&self) -> Option<&'a [u8]> {
        let seg = &self.segments[self.interp_segment?];
        let bytes = slice(self.data, seg.offset, seg.filesz)?;
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Some(&bytes[..len])
    }

    pub(crate) fn interp_segment(&self) -> Option<&Segment> {
        self.interp_segment.map(|i| &self.segments[i])
    }

    /// Entries of the dynamic section before its terminating `DT_NULL`.
    pub fn dynamic_entries(&self) -> &[DynEntry] {
        self.dynamic.as_ref().map_or(&[], |d| &d.entries)
    }

    pub fn has_dynamic(&self) -> bool {
        self.dynamic.is_some()
    }

    fn dyn_string(&self, entry: &DynEntry) -> Option<&'a [u8]> {
        self.strtab.as_ref()?.get(entry.val)
    }

    fn dyn_strings(&self, tag: i64) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.dynamic_entries()
            .iter()
            .filter(move |e| e.tag == tag)
            .filter_map(|e| self.dyn_string(e))
    }

    /// The run path and which tag holds it; `DT_RUNPATH` wins when both are present, as it does
    /// in the loader.
    pub fn run_path(&self) -> Option<(RunPathKind, &'a [u8])> {
        let runpath = self.dyn_strings(DT_RUNPATH).next();
        let rpath = self.dyn_strings(DT_RPATH).next();
        runpath
            .map(|s| (RunPathKind::RunPath, s))
            .or(rpath.map(|s| (RunPathKind::RPath, s)))
    }

    /// The `DT_RPATH` entry, whatever `DT_RUNPATH` says.
    pub fn rpath(&self) -> Option<&'a [u8]> {
        self.dyn_strings(DT_RPATH).next()
    }

    /// The `DT_RUNPATH` entry.
    pub fn runpath(&self) -> Option<&'a [u8]> {
        self.dyn_strings(DT_RUNPATH).next()
    }

    pub fn needed(&self) -> Vec<&'a [u8]> {
        self.dyn_strings(DT_NEEDED).collect()
    }

    pub fn soname(&self) -> Option<&'a [u8]> {
        self.dyn_strings(DT_SONAME).next()
    }

    /// Whether this file is loaded by the dynamic loader: an executable or shared object.
    pub fn is_loadable(&self) -> bool {
        matches!(self.e_type, super::ET_EXEC | super::ET_DYN)
    }

    /// Statically linked: no dynamic section, nothing for the loader to resolve.
    pub fn is_static(&self) -> bool {
        self.dynamic.is_none()
    }

    /// Whether the file relocates itself, with no interpreter to load it or libraries to
    /// load: the dynamic loader itself, or a static-pie program. glibc's start-up code for these
    /// stops on a run path.
    pub fn relocates_itself(&self) -> bool {
        self.e_type == super::ET_DYN
            && self.interp_segment.is_none()
            && self.entry != 0
            && self.has_dynamic()
            && self.needed().is_empty()
    }

    /// A separate debug file (`objcopy --only-keep-debug`): headers of a real object, no code.
    pub fn is_separate_debug(&self) -> bool {
        self.sections
            .iter()
            .any(|s| (s.name == b".text" || s.name == b".dynamic") && s.sh_type == SHT_NOBITS)
    }

    /// The largest page size the file's machine may run with; growth keeps offsets and
    /// addresses congruent modulo this.
    pub fn max_page_size(&self) -> u64 {
        let machine = match self.machine {
            super::EM_X86_64 | super::EM_386 | super::EM_S390 | super::EM_RISCV => 0x1000,
            _ => 0x10000,
        };
        self.load_segments()
            .map(|s| s.align)
            .filter(|a| a.is_power_of_two())
            .fold(machine, u64::max)
    }

    pub(crate) fn load_segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| s.is_load())
    }

    /// The file offset the loader reads for virtual address `vaddr`.
    pub fn vaddr_to_offset(&self, vaddr: u64) -> Option<u64> {
        self.load_segments().find_map(|s| s.file_offset_of(vaddr))
    }

    pub(crate) fn dyn_value(&self, tag: i64) -> Option<u64> {
        self.dynamic_entries()
            .iter()
            .find(|e| e.tag == tag)
            .map(|e| e.val)
    }

    /// The versions this file needs from each library (`DT_VERNEED`).
    pub fn version_needs(&self) -> Vec<VersionNeed> {
        self.read_version_needs().unwrap_or_default()
    }

    fn read_version_needs(&self) -> Option<Vec<VersionNeed>> {
        let strtab = self.strtab.as_ref()?;
        let count = self.version_records(DT_VERNEEDNUM);
        let mut at = self.vaddr_to_offset(self.dyn_value(DT_VERNEED)?)?;
        let c = self.codec();
        let mut needs = Vec::new();
        for _ in 0..count.min(4096) {
            let rec = slice(self.data, at, 16)?;
            let vn_cnt = u64::from(c.read_u16(&rec[2..]));
            let file_string = u64::from(c.read_u32(&rec[4..]));
            let mut aux_at = at.checked_add(u64::from(c.read_u32(&rec[8..])))?;
            let mut versions = Vec::new();
            let mut version_strings = Vec::new();
            let mut weak = Vec::new();
            for _ in 0..vn_cnt.min(4096) {
                let aux = slice(self.data, aux_at, 16)?;
                let name = u64::from(c.read_u32(&aux[8..]));
                versions.push(lossy(strtab.get(name)?));
                version_strings.push(name);
                weak.push(c.read_u16(&aux[4..]) & VER_FLG_WEAK != 0);
                match c.read_u32(&aux[12..]) {
                    0 => break,
                    next => aux_at = aux_at.checked_add(u64::from(next))?,
                }
            }
            needs.push(VersionNeed {
                file: lossy(strtab.get(file_string)?),
                versions,
                file_field_offset: at + 4,
                file_string,
                version_strings,
                weak,
            });
            match c.read_u32(&rec[12..]) {
                0 => break,
                next => at = at.checked_add(u64::from(next))?,
            }
        }
        Some(needs)
    }

    /// The byte ranges of the version needs and of the version definitions, each table as one
    /// span from its first byte to its last: the editor reads the names they hold, so it must not
    /// write over them. Tables that cannot be read give none.
    pub(crate) fn version_table_spans(&self) -> Vec<(u64, u64)> {
        self.version_tables()
            .filter_map(|(vaddr, count, layout)| {
                let (mut low, mut high) = (u64::MAX, 0);
                self.walk_version_table(vaddr, count, layout, &mut |start, len| {
                    low = low.min(start);
                    high = high.max(start + len);
                });
                (high > low).then(|| (low, high - low))
            })
            .collect()
    }

    /// Whether two records or entries of the version tables share a byte (a record met twice,
    /// through a loop of `next` offsets, is one): renaming a library in one would change
    /// another.
    pub(crate) fn version_entries_overlap(&self) -> bool {
        let mut pieces = Vec::new();
        for (vaddr, count, layout) in self.version_tables() {
            self.walk_version_table(vaddr, count, layout, &mut |start, len| {
                pieces.push((start, len));
            });
        }
        pieces.sort_unstable();
        pieces.dedup();
        pieces.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0)
    }

    /// How many records a version table has: its count tag's value, or without one as many as
    /// its records' `next` links reach, as glibc walks them (its loader never reads the count).
    fn version_records(&self, count_tag: i64) -> u64 {
        self.dyn_value(count_tag).unwrap_or(u64::MAX)
    }

    fn version_tables(&self) -> impl Iterator<Item = (u64, u64, &'static VersionLayout)> + '_ {
        [
            (DT_VERNEED, DT_VERNEEDNUM, &NEED_LAYOUT),
            (DT_VERDEF, DT_VERDEFNUM, &DEF_LAYOUT),
        ]
        .into_iter()
        .filter_map(|(table, count, layout)| {
            Some((self.dyn_value(table)?, self.version_records(count), layout))
        })
    }

    /// Calls `visit` with the offset and length of every record and auxiliary entry of the
    /// version table at `vaddr` that can be read, stopping at the first that cannot (the readers
    /// stop there too).
    fn walk_version_table(
        &self,
        vaddr: u64,
        count: u64,
        layout: &VersionLayout,
        visit: &mut dyn FnMut(u64, u64),
    ) {
        let c = self.codec();
        let mut next_record = self.vaddr_to_offset(vaddr);
        for _ in 0..count.min(4096) {
            let Some((at, record)) =
                next_record.and_then(|at| Some((at, slice(self.data, at, layout.record)?)))
            else {
                break;
            };
            visit(at, layout.record);
            let mut next_aux = at.checked_add(u64::from(c.read_u32(&record[layout.aux_at..])));
            // A definition's first auxiliary entry (its name) is read whatever its count says.
            for _ in 0..c.read_u16(&record[layout.aux_count_at..]).clamp(1, 4096) {
                let Some((aux_at, aux)) =
                    next_aux.and_then(|a| Some((a, slice(self.data, a, layout.aux)?)))
                else {
                    break;
                };
                visit(aux_at, layout.aux);
                next_aux = match c.read_u32(&aux[layout.aux_next_at..]) {
                    0 => None,
                    next => aux_at.checked_add(u64::from(next)),
                };
            }
            next_record = match c.read_u32(&record[layout.next_at..]) {
                0 => None,
                next => at.checked_add(u64::from(next)),
            };
        }
    }

    /// Offsets into the dynamic string table that something in the file refers to: dynamic
    /// entries, version tables and dynamic symbols. `None` when the number of dynamic symbols
    /// cannot be told, so any string may be a symbol's name.
    pub(crate) fn string_references(&self) -> Option<Vec<u64>> {
        let dynamic = self
            .dynamic_entries()
            .iter()
            .filter(|e| STRING_TAGS.contains(&e.tag))
            .map(|e| e.val);
        let files = self.version_needs().into_iter().map(|n| n.file_string);
        let mut references: Vec<u64> = dynamic.chain(files).collect();
        references.extend(self.version_name_strings());
        references.extend(self.symbol_name_strings()?);
        Some(references)
    }

    /// The string offsets of the version names the version tables give: each version needed,
    /// and every name a definition gives (its own, then its parents').
    pub(crate) fn version_name_strings(&self) -> Vec<u64> {
        let needs = self
            .version_needs()
            .into_iter()
            .flat_map(|n| n.version_strings);
        let mut names: Vec<u64> = needs.collect();
        if let Some(vaddr) = self.dyn_value(DT_VERDEF) {
            let c = self.codec();
            let count = self.version_records(DT_VERDEFNUM);
            self.walk_version_table(vaddr, count, &DEF_LAYOUT, &mut |at, len| {
                // `vda_name` opens each auxiliary entry; records are longer.
                if len == DEF_LAYOUT.aux
                    && let Some(aux) = slice(self.data, at, 4)
                {
                    names.push(u64::from(c.read_u32(aux)));
                }
            });
        }
        names
    }

    /// The string offsets the dynamic symbols name (`st_name`; the empty name left out), or
    /// `None` when the symbol table's length cannot be told. Linkers share string tails, so a
    /// symbol may be named by the end of a run path.
    pub(crate) fn symbol_name_strings(&self) -> Option<Vec<u64>> {
        let Some(symtab) = self.dyn_value(DT_SYMTAB) else {
            return Some(Vec::new());
        };
        let entry = self.symbol_size();
        let count = self.dynamic_symbol_count(symtab)?;
        let at = self.vaddr_to_offset(symtab)?;
        let table = slice(self.data, at, count.checked_mul(entry)?)?;
        let c = self.codec();
        Some(
            table
                .chunks_exact(entry as usize)
                .map(|symbol| u64::from(c.read_u32(symbol)))
                .filter(|&name| name != 0)
                .collect(),
        )
    }

    /// How many entries the dynamic symbol table at `symtab` has, from its hash tables as the
    /// loader reads them, else from its section header.
    fn dynamic_symbol_count(&self, symtab: u64) -> Option<u64> {
        let hashed = match self.class {
            Class::Elf32 => self.hashed_symbol_count::<FileHeader32<Endianness>>(),
            Class::Elf64 => self.hashed_symbol_count::<FileHeader64<Endianness>>(),
        };
        hashed.or_else(|| {
            self.sections
                .iter()
                .find(|s| s.sh_type == SHT_DYNSYM && s.addr == symtab)
                .map(|s| s.size / self.symbol_size())
        })
    }

    /// The size of an `Elf32_Sym` or `Elf64_Sym`.
    fn symbol_size(&self) -> u64 {
        match self.class {
            Class::Elf32 => 16,
            Class::Elf64 => 24,
        }
    }

    fn hashed_symbol_count<H: FileHeader<Endian = Endianness>>(&self) -> Option<u64> {
        let endian = if self.little_endian {
            Endianness::Little
        } else {
            Endianness::Big
        };
        let table = |tag| {
            let at = self.vaddr_to_offset(self.dyn_value(tag)?)?;
            self.data.get(usize::try_from(at).ok()?..)
        };
        let sysv = table(DT_HASH)
            .and_then(|data| HashTable::<H>::parse(endian, data).ok())
            .map(|t| t.symbol_table_length());
        let gnu = || {
            let data = table(DT_GNU_HASH)?;
            GnuHashTable::<H>::parse(endian, data)
                .ok()?
                .symbol_table_length(endian)
        };
        sysv.or_else(gnu).map(u64::from)
    }

    /// The versions this file defines (`DT_VERDEF`).
    pub fn version_defs(&self) -> Vec<VersionDef> {
        self.read_version_defs().unwrap_or_default()
    }

    fn read_version_defs(&self) -> Option<Vec<VersionDef>> {
        const VER_FLG_BASE: u16 = 1;
        let strtab = self.strtab.as_ref()?;
        let count = self.version_records(DT_VERDEFNUM);
        let mut at = self.vaddr_to_offset(self.dyn_value(DT_VERDEF)?)?;
        let c = self.codec();
        let mut defs = Vec::new();
        for _ in 0..count.min(65536) {
            let rec = slice(self.data, at, 20)?;
            let flags = c.read_u16(&rec[2..]);
            let aux_at = at.checked_add(u64::from(c.read_u32(&rec[12..])))?;
            let aux = slice(self.data, aux_at, 8)?;
            let name_string = u64::from(c.read_u32(aux));
            defs.push(VersionDef {
                name: lossy(strtab.get(name_string)?),
                is_base: flags & VER_FLG_BASE != 0,
            });
            match c.read_u32(&rec[16..]) {
                0 => break,
                next => at = at.checked_add(u64::from(next))?,
            }
        }
        Some(defs)
    }
}

/// Where the fields of a version table's records and auxiliary entries lie (`Elf64_Verneed`
/// and `Elf64_Vernaux`, `Elf64_Verdef` and `Elf64_Verdaux`; the same in 32-bit files).
struct VersionLayout {
    record: u64,
    aux_count_at: usize,
    aux_at: usize,
    next_at: usize,
    aux: u64,
    aux_next_at: usize,
}

const NEED_LAYOUT: VersionLayout = VersionLayout {
    record: 16,
    aux_count_at: 2,
    aux_at: 8,
    next_at: 12,
    aux: 16,
    aux_next_at: 12,
};

const DEF_LAYOUT: VersionLayout = VersionLayout {
    record: 20,
    aux_count_at: 6,
    aux_at: 12,
    next_at: 16,
    aux: 8,
    aux_next_at: 4,
};

pub(crate) fn slice(data: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    data.get(start..end)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn parse_class<'a, H>(data: &'a [u8], class: Class) -> Result<Elf<'a>, ElfError>
where
    H: FileHeader<Endian = Endianness>,
    H::Word: Into<u64>,
{
    let header = H::parse(data)?;
    let endian = header.endian()?;
    let segments: Vec<Segment> = header
        .program_headers(endian, data)?
        .iter()
        .map(|p| Segment {
            p_type: p.p_type(endian).0,
            flags: p.p_flags(endian).0,
            offset: p.p_offset(endian).into(),
            vaddr: p.p_vaddr(endian).into(),
            paddr: p.p_paddr(endian).into(),
            filesz: p.p_filesz(endian).into(),
            memsz: p.p_memsz(endian).into(),
            align: p.p_align(endian).into(),
        })
        .collect();
    let sections = read_sections(header, endian, data)?;
    // Ranges are added up everywhere; one that wraps around the address space is broken.
    let wraps = |at: u64, len: u64| at.checked_add(len).is_none();
    if segments
        .iter()
        .any(|s| wraps(s.offset, s.filesz) || wraps(s.vaddr, s.memsz))
        || sections
            .iter()
            .any(|s| wraps(s.offset, s.size) || wraps(s.addr, s.size))
    {
        return Err(ElfError::malformed(
            "a segment or section wraps around the address space",
        ));
    }
    let mut elf = Elf {
        data,
        class,
        little_endian: endian == Endianness::Little,
        e_type: header.e_type(endian).0,
        entry: header.e_entry(endian).into(),
        machine: header.e_machine(endian).0,
        os_abi: header.e_ident().os_abi.0,
        phoff: header.e_phoff(endian).into(),
        shoff: header.e_shoff(endian).into(),
        interp_segment: segments.iter().position(|s| s.p_type == PT_INTERP),
        segments,
        sections,
        dynamic: None,
        strtab: None,
    };
    if let Some(seg) = elf.interp_segment() {
        slice(data, seg.offset, seg.filesz)
            .ok_or_else(|| ElfError::malformed("PT_INTERP lies outside the file"))?;
    }
    if header.e_phnum(endian) != 0 && elf.segments.is_empty() {
        return Err(ElfError::malformed(
            "e_phnum is 65535 (PN_XNUM) but section 0 gives no program header count",
        ));
    }
    check_segments(&elf.segments)?;
    elf.dynamic = read_dynamic(&elf)?;
    elf.strtab = read_strtab(&elf)?;
    check_strings(&elf)?;
    check_versions(&elf)?;
    Ok(elf)
}

/// Loadable segments must not overlap, and the dynamic section must be loaded: the loader
/// would map one segment over another, or read the dynamic section from nowhere.
fn check_segments(segments: &[Segment]) -> Result<(), ElfError> {
    let mut loads: Vec<&Segment> = segments.iter().filter(|s| s.is_load()).collect();
    loads.sort_by_key(|s| s.vaddr);
    if let Some(pair) = loads.windows(2).find(|p| p[0].vaddr_end() > p[1].vaddr) {
        return Err(ElfError::malformed(format!(
            "loadable segments overlap at address {:#x}",
            pair[1].vaddr
        )));
    }
    let Some(dynamic) = segments.iter().find(|s| s.p_type == PT_DYNAMIC) else {
        return Ok(());
    };
    let loaded = loads.iter().any(|l| {
        dynamic.vaddr >= l.vaddr
            && dynamic.vaddr.saturating_add(dynamic.filesz) <= l.vaddr.saturating_add(l.filesz)
            && dynamic.offset.wrapping_sub(l.offset) == dynamic.vaddr - l.vaddr
    });
    if !loaded {
        return Err(ElfError::malformed(
            "the dynamic section (PT_DYNAMIC) lies outside every loadable segment",
        ));
    }
    Ok(())
}

/// Every string the dynamic section names must lie inside the string table.
fn check_strings(elf: &Elf) -> Result<(), ElfError> {
    let Some(strtab) = &elf.strtab else {
        return Ok(());
    };
    let outside = elf
        .dynamic_entries()
        .iter()
        .find(|e| STRING_TAGS.contains(&e.tag) && strtab.get(e.val).is_none());
    match outside {
        Some(e) => Err(ElfError::malformed(format!(
            "dynamic entry {:#x} names a string at {:#x}, past the end of the string table",
            e.tag, e.val
        ))),
        None => Ok(()),
    }
}

/// The version needs and definitions a file declares must be readable, their names inside the
/// string table: the loader checks them, and an edit must know every string they name.
fn check_versions(elf: &Elf) -> Result<(), ElfError> {
    let declared = |table| elf.dyn_value(table).is_some();
    let needs_unreadable = declared(DT_VERNEED) && elf.read_version_needs().is_none();
    let defs_unreadable = declared(DT_VERDEF) && elf.read_version_defs().is_none();
    if needs_unreadable || defs_unreadable {
        return Err(ElfError::malformed(
            "the symbol versions lie outside the file or name strings past the end of the string table",
        ));
    }
    Ok(())
}

fn read_sections<'a, H>(
    header: &'a H,
    endian: Endianness,
    data: &'a [u8],
) -> Result<Vec<Section<'a>>, ElfError>
where
    H: FileHeader<Endian = Endianness>,
    H::Word: Into<u64>,
{
    let headers = header.section_headers(endian, data)?;
    if headers.is_empty() {
        return Ok(Vec::new());
    }
    // A missing or broken section name table is tolerated: names are only used to recognise
    // a few sections, and the loader never reads them.
    let names = header
        .section_strings(endian, data, headers)
        .unwrap_or_default();
    let shoff: u64 = header.e_shoff(endian).into();
    let entsize = u64::from(header.e_shentsize(endian));
    Ok(headers
        .iter()
        .enumerate()
        .map(|(index, s)| Section {
            index,
            name: s.name(endian, names).unwrap_or_default(),
            sh_type: s.sh_type(endian).0,
            flags: s.sh_flags(endian).0,
            addr: s.sh_addr(endian).into(),
            offset: s.sh_offset(endian).into(),
            size: s.sh_size(endian).into(),
            header_offset: shoff + index as u64 * entsize,
        })
        .collect())
}

fn read_dynamic(elf: &Elf) -> Result<Option<Dynamic>, ElfError> {
    let Some(seg) = elf.segments.iter().find(|s| s.p_type == PT_DYNAMIC) else {
        return Ok(None);
    };
    let c = elf.codec();
    let entry_size = c.dyn_size() as u64;
    let bytes = slice(elf.data, seg.offset, seg.filesz)
        .ok_or_else(|| ElfError::malformed("PT_DYNAMIC lies outside the file"))?;
    let mut entries = Vec::new();
    for raw in bytes.chunks_exact(entry_size as usize) {
        let (tag, val) = match elf.class {
            Class::Elf32 => (
                i64::from(c.read_u32(raw) as i32),
                u64::from(c.read_u32(&raw[4..])),
            ),
            Class::Elf64 => (c.read_u64(raw) as i64, c.read_u64(&raw[8..])),
        };
        if tag == DT_NULL {
            break;
        }
        entries.push(DynEntry { tag, val });
    }
    Ok(Some(Dynamic {
        offset: seg.offset,
        capacity: (seg.filesz / entry_size) as usize,
        entries,
    }))
}

fn read_strtab<'a>(elf: &Elf<'a>) -> Result<Option<StrTab<'a>>, ElfError> {
    let (Some(vaddr), Some(size)) = (elf.dyn_value(DT_STRTAB), elf.dyn_value(DT_STRSZ)) else {
        return Ok(None);
    };
    let offset = elf
        .vaddr_to_offset(vaddr)
        .ok_or_else(|| ElfError::malformed("DT_STRTAB is not in a loaded segment"))?;
    let bytes = slice(elf.data, offset, size).ok_or_else(|| {
        ElfError::malformed("the dynamic string table runs past the end of the file")
    })?;
    Ok(Some(StrTab {
        vaddr,
        offset,
        bytes,
    }))
}
