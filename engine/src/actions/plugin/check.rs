//! The check a plugin library passes before it is mapped.
//!
//! The dynamic loader maps a library's segments straight from the file: a segment that
//! reaches past the end of a truncated file (a copy cut short, a build still writing it)
//! is mapped anyway, and the first access to it kills the process with `SIGBUS`. So the
//! bytes about to be loaded are checked first: an ELF file of this machine's class, byte
//! order and architecture, a shared object, whose program headers, segments, section
//! headers and sections all lie within the file. This is not a full validation of the
//! file (a library is code the operator chose to run); it refuses the files that are
//! incomplete or built for another machine, with a message that says which.
//!
//! Only the headers are read (through a small read cache), never the whole file: a
//! library of a debug build has megabytes, and a buffer that size, allocated and freed
//! once, raises glibc's mmap and trim thresholds for the rest of the process, which then
//! keeps freed heap memory resident.

/// Checks the library in `file` (the private copy about to be loaded).
pub(crate) fn check_file(file: &std::fs::File) -> Result<(), String> {
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read the copy's size: {e}"))?
        .len();
    check(&object::ReadCache::new(file), len)
}

#[cfg(all(unix, not(target_vendor = "apple")))]
use elf_check::check;

/// On platforms whose libraries are not ELF files, nothing is checked here.
#[cfg(not(all(unix, not(target_vendor = "apple"))))]
fn check<'a, R: object::ReadRef<'a>>(_data: R, _len: u64) -> Result<(), String> {
    Ok(())
}

#[cfg(all(unix, not(target_vendor = "apple")))]
mod elf_check {
    use object::elf;
    use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
    use object::{Endianness, ReadRef};

    #[cfg(target_pointer_width = "64")]
    type Header = elf::FileHeader64<Endianness>;
    #[cfg(target_pointer_width = "32")]
    type Header = elf::FileHeader32<Endianness>;

    const CLASS: u8 = if cfg!(target_pointer_width = "64") {
        elf::ELFCLASS64.0
    } else {
        elf::ELFCLASS32.0
    };
    const DATA: u8 = if cfg!(target_endian = "little") {
        elf::ELFDATA2LSB.0
    } else {
        elf::ELFDATA2MSB.0
    };

    /// This machine's ELF `e_machine` and its name, when known.
    fn native_machine() -> Option<(elf::Machine, &'static str)> {
        let arch = std::env::consts::ARCH;
        let m = match arch {
            "x86_64" => elf::EM_X86_64,
            "x86" => elf::EM_386,
            "aarch64" => elf::EM_AARCH64,
            "arm" => elf::EM_ARM,
            "riscv64" | "riscv32" => elf::EM_RISCV,
            "powerpc64" => elf::EM_PPC64,
            "s390x" => elf::EM_S390,
            "loongarch64" => elf::EM_LOONGARCH,
            _ => return None,
        };
        Some((m, arch))
    }

    fn bits(class: u8) -> &'static str {
        match elf::FileClass(class) {
            elf::ELFCLASS32 => "32-bit",
            elf::ELFCLASS64 => "64-bit",
            _ => "unknown-class",
        }
    }

    /// Checks that `data`, the whole file of `len` bytes, is a complete ELF shared object
    /// for this machine.
    // ELF words are `u32` in 32-bit files: `u64::from` is a conversion there.
    #[allow(clippy::useless_conversion)]
    pub(super) fn check<'a, R: ReadRef<'a>>(data: R, len: u64) -> Result<(), String> {
        let magic = data.read_bytes_at(0, elf::ELFMAG.len() as u64).ok();
        if magic != Some(&elf::ELFMAG[..]) {
            return Err(format!(
                "not an ELF file (no ELF magic number at its start; it has {len} bytes)"
            ));
        }
        let Ok(&[class, order]) = data.read_bytes_at(4, 2) else {
            return Err(format!(
                "the ELF header is truncated: the file has only {len} bytes (a copy cut short, or a build still writing it?)"
            ));
        };
        if class != CLASS {
            return Err(format!(
                "it is a {} ELF file, but this Turnstile is {}: build the plugin for this machine",
                bits(class),
                bits(CLASS)
            ));
        }
        if order != DATA {
            return Err(
                "it is an ELF file of the other byte order: build the plugin for this machine"
                    .into(),
            );
        }
        let header = Header::parse(data).map_err(|e| {
            format!(
                "the ELF header is truncated or malformed ({e}); the file has {len} bytes (a copy cut short, or a build still writing it?)"
            )
        })?;
        let endian = header.endian().map_err(|e| e.to_string())?;
        if header.e_type(endian) != elf::ET_DYN {
            return Err(format!(
                "it is an ELF file but not a shared object (type {:?}): build the plugin as a shared library (`cdylib`, `cc -shared`)",
                header.e_type(endian)
            ));
        }
        if let Some((machine, arch)) = native_machine() {
            let found = header.e_machine(endian);
            if found != machine {
                return Err(format!(
                    "it is built for another architecture (ELF machine {found:?}), but this Turnstile runs on {arch}: build the plugin for this machine"
                ));
            }
        }
        let truncated = |what: String, end: u128| {
            format!(
                "the file is truncated: {what} ends at byte {end} but the file has {len} bytes (a copy cut short, or a build still writing it?)"
            )
        };
        let size = u128::from(len);
        let phoff = u128::from(u64::from(header.e_phoff(endian)));
        let phdrs = header.program_headers(endian, data).map_err(|e| {
            let end =
                phoff + u128::from(header.e_phnum(endian)) * u128::from(header.e_phentsize(endian));
            if end > size {
                truncated("the program header table".into(), end)
            } else {
                format!("malformed program headers: {e}")
            }
        })?;
        if !phdrs.iter().any(|p| p.p_type(endian) == elf::PT_LOAD) {
            return Err("it has no loadable segment: not a shared library".into());
        }
        for (i, p) in phdrs.iter().enumerate() {
            let (offset, filesz) = p.file_range(endian);
            let end = u128::from(offset) + u128::from(filesz);
            if filesz > 0 && end > size {
                return Err(truncated(format!("segment {i}"), end));
            }
        }
        let shoff = u128::from(u64::from(header.e_shoff(endian)));
        let shdrs = header.section_headers(endian, data).map_err(|e| {
            let end =
                shoff + u128::from(header.e_shnum(endian)) * u128::from(header.e_shentsize(endian));
            if end > size {
                truncated("the section header table".into(), end)
            } else {
                format!("malformed section headers: {e}")
            }
        })?;
        for (i, s) in shdrs.iter().enumerate() {
            if let Some((offset, bytes)) = s.file_range(endian) {
                let end = u128::from(offset) + u128::from(bytes);
                if bytes > 0 && end > size {
                    return Err(truncated(format!("section {i}"), end));
                }
            }
        }
        Ok(())
    }
}
