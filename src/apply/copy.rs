//! Copying byte ranges between files without reading them into memory where the kernel can do
//! it, and without filling holes of sparse files.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Copies `src[from..from + len]` to `dst[to..]`, skipping holes.
pub fn copy_range(
    src: &File,
    data: &[u8],
    dst: &File,
    from: u64,
    len: u64,
    to: u64,
) -> io::Result<()> {
    let end = from + len;
    let mut at = from;
    while at < end {
        let Some(data_start) = seek(src, at, libc::SEEK_DATA)? else {
            break;
        };
        if data_start >= end {
            break;
        }
        let data_end = seek(src, data_start, libc::SEEK_HOLE)?
            .unwrap_or(end)
            .min(end);
        copy_extent(
            src,
            data,
            dst,
            data_start,
            data_end - data_start,
            to + (data_start - from),
        )?;
        at = data_end;
    }
    Ok(())
}

/// `lseek` with `SEEK_DATA` or `SEEK_HOLE`; `None` past the last data. Filesystems without
/// hole support report the whole file as data, which is still correct.
fn seek(file: &File, at: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: lseek on a valid descriptor has no memory effects.
    let r = unsafe { libc::lseek(file.as_raw_fd(), at as libc::off_t, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        e if e.raw_os_error() == Some(libc::EINVAL) => {
            Ok((whence == libc::SEEK_DATA).then_some(at))
        }
        e => Err(e),
    }
}

fn copy_extent(
    src: &File,
    data: &[u8],
    dst: &File,
    from: u64,
    len: u64,
    to: u64,
) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let mut off_in = (from + done) as libc::loff_t;
        let mut off_out = (to + done) as libc::loff_t;
        // SAFETY: both descriptors are valid and the offsets are owned locals.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                (len - done) as usize,
                0,
            )
        };
        if n > 0 {
            done += n as u64;
            continue;
        }
        if n == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => break,
            _ => return Err(err),
        }
    }
    if done < len {
        let start = (from + done) as usize;
        let bytes = data.get(start..(from + len) as usize).ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while copying")
        })?;
        dst.write_all_at(bytes, to + done)?;
    }
    Ok(())
}
