//! Files that must survive a crash, and files written past the page cache. Everything here
//! is plain I/O on paths the caller chooses; what the files mean is the caller's business.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use bytes::Bytes;

use super::pool::{Buf, DIRECT_ALIGN};

/// Suffix of every temporary file this module creates; a store that finds one at start knows
/// a write was interrupted and may remove it.
pub const TEMP_MARK: &str = ".tmp-";

/// A temporary name beside `path`, unique per write (process id and a counter): two writers
/// of the same file never share a temporary file.
fn temporary_name(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!("{TEMP_MARK}{}-{n}", std::process::id()));
    path.with_file_name(name)
}

/// How many leading bytes of `data` can go with O_DIRECT: its whole pages, when it starts on
/// a page boundary.
fn direct_prefix(data: &[u8]) -> usize {
    if (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) { data.len() / DIRECT_ALIGN * DIRECT_ALIGN } else { 0 }
}

/// Writes `path` so that after return it is on disk whole or not at all: a temporary file,
/// synced, then renamed, and the directory synced. The whole pages go with O_DIRECT and only
/// an unaligned tail through the page cache: measured here, copying cold shard bytes into the
/// page cache cost over half of a node's CPU during uploads (shards of 1 MiB + 2 bytes, as
/// the S3 gateway's 8 MiB parts make, cost 2.5x the node CPU of aligned ones until their
/// pages went direct too), and a node never reads a shard back soon enough for the cache to
/// pay (audits read a few chunks). Filesystems without O_DIRECT (tmpfs) get the buffered path.
pub fn write_durably(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = temporary_name(path);
    let direct = direct_prefix(data);
    match write_synced(&tmp, data, direct) {
        Err(e) if direct > 0 && e.raw_os_error() == Some(libc::EINVAL) => write_synced(&tmp, data, 0)?,
        r => r?,
    }
    fs::rename(&tmp, path)?;
    // The new name is durable only once its directory is: a crash could otherwise undo the
    // rename after the caller was told the data is safe (a node's receipt).
    fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Writes a long stream to a file past the page cache: bytes gather in an aligned buffer
/// whose full blocks a writer thread sends out with O_DIRECT (so the disk's latency overlaps
/// the caller's work), and the unaligned tail goes through the cache at
/// [`DirectWriter::finish`]. Measured here, copying a 1 GiB download into the page cache took
/// half of the client's CPU. Filesystems without O_DIRECT (tmpfs) get plain writes.
pub struct DirectWriter {
    buf: Buf,
    blocks: Option<mpsc::SyncSender<Buf>>,
    writer: Option<std::thread::JoinHandle<io::Result<fs::File>>>,
}

/// Bytes per direct write: one disk round trip per segment.
const DIRECT_BLOCK: usize = 8 << 20;

impl DirectWriter {
    /// Starts writing at the beginning of `file`, which must be empty.
    pub fn new(file: &fs::File) -> io::Result<DirectWriter> {
        let mut file = file.try_clone()?; // shares the file offset and flags
        let (tx, rx) = mpsc::sync_channel::<Buf>(1);
        let writer = std::thread::Builder::new().name("direct-writer".into()).spawn(move || {
            let mut direct = set_direct(&file, true).is_ok();
            for block in rx {
                match file.write_all(&block) {
                    // Some filesystems accept the flag and refuse the write: go on without it.
                    Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                        set_direct(&file, false)?;
                        direct = false;
                        file.write_all(&block)?;
                    }
                    r => r?,
                }
            }
            if direct {
                set_direct(&file, false)?;
            }
            Ok(file)
        })?;
        Ok(DirectWriter { buf: Buf::with_capacity(DIRECT_BLOCK), blocks: Some(tx), writer: Some(writer) })
    }

    /// Waits for the blocks sent so far, then writes the tail through the cache.
    pub fn finish(mut self) -> io::Result<()> {
        let mut file = self.stop()?;
        file.write_all(&self.buf)
    }

    /// Ends the writer thread; its file, or the error that stopped it.
    fn stop(&mut self) -> io::Result<fs::File> {
        self.blocks = None;
        let writer = self.writer.take().ok_or_else(|| io::Error::other("the writer has already stopped"))?;
        writer.join().map_err(|_| io::Error::other("the writer thread panicked"))?
    }
}

impl Write for DirectWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(DIRECT_BLOCK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == DIRECT_BLOCK {
            let block = std::mem::replace(&mut self.buf, Buf::with_capacity(DIRECT_BLOCK));
            let sent = self.blocks.as_ref().is_some_and(|b| b.send(block).is_ok());
            if !sent {
                // The thread ended early: its error says why.
                self.stop()?;
                return Err(io::Error::other("the writer thread stopped"));
            }
        }
        Ok(n)
    }

    /// Only whole blocks can leave early; the rest waits for `finish`.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for DirectWriter {
    /// A download that failed midway still waits for its writes, so nothing touches the file
    /// after it is gone.
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = self.stop();
        }
    }
}

/// Turns O_DIRECT on or off for an open file.
fn set_direct(file: &fs::File, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we hold open, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads a whole file past the page cache, as [`write_durably`] wrote its pages (the last,
/// partial block comes back whole from a direct read that stops at the end of the file).
/// Files shorter than a page, and filesystems without O_DIRECT, are read through the cache.
pub fn read_whole(path: &Path) -> io::Result<Bytes> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let len = fs::metadata(path)?.len() as usize;
    if len < DIRECT_ALIGN {
        return fs::read(path).map(Bytes::from);
    }
    let mut f = match fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return fs::read(path).map(Bytes::from),
        r => r?,
    };
    let mut buf = Buf::with_len(len.next_multiple_of(DIRECT_ALIGN));
    let mut got = 0;
    while got < len {
        match f.read(&mut buf[got..])? {
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while it was read")),
            n => got += n,
        }
    }
    buf.truncate(len);
    Ok(buf.into_bytes())
}

/// Writes `data` to a new file and syncs it; the first `direct` bytes (whole pages of an
/// aligned buffer) with O_DIRECT, the rest through the page cache.
fn write_synced(path: &Path, data: &[u8], direct: usize) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = if direct > 0 { libc::O_DIRECT } else { 0 };
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).custom_flags(flags).open(path)?;
    let (pages, tail) = data.split_at(direct);
    f.write_all(pages)?;
    if direct > 0 && !tail.is_empty() {
        set_direct(&f, false)?;
    }
    f.write_all(tail)?;
    f.sync_data()
}

/// Writes `path` through a temporary file in the same directory that is renamed into place
/// only if `write` succeeds and the data reached the disk: a failed or interrupted write
/// leaves nothing behind. Refuses to replace an existing file unless `overwrite`.
pub fn write_atomically<T, E: From<AtomicWriteError>>(
    path: &Path,
    overwrite: bool,
    write: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, E> {
    let io = |source: io::Error| AtomicWriteError::Io { path: path.to_owned(), source };
    if !overwrite && path.exists() {
        return Err(AtomicWriteError::Exists { path: path.to_owned() }.into());
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".p2pstore-").suffix(".part").tempfile_in(dir).map_err(io)?;
    let value = write(tmp.as_file_mut())?;
    tmp.as_file().sync_all().map_err(io)?;
    if overwrite {
        tmp.persist(path).map_err(|e| io(e.error))?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| io(e.error))?;
    }
    Ok(value)
}

/// Why an atomic write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    #[error("{path} already exists; pass --force to overwrite it")]
    Exists { path: PathBuf },
    #[error("writing {path}")]
    Io { path: PathBuf, source: io::Error },
}

/// Reads the secret at `path`, or creates it with `make` on first use: owner-only (0600)
/// from its first byte, in a directory only its owner can enter (0700 when created here).
pub fn read_or_create_secret(path: &Path, make: impl FnOnce() -> io::Result<Vec<u8>>) -> io::Result<Vec<u8>> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_private_dir(dir)?;
            }
            let secret = make()?;
            write_private(path, &secret)?;
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}

/// Creates `dir` (and its parents) if missing; a directory created here is 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Writes a file durably with mode 0600 from its creation: no moment where another user
/// could open it.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = temporary_name(path);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::pool::AlignedBuf;

    /// A directory on the disk and, where there is one, on tmpfs, which refuses O_DIRECT and
    /// so takes the fallback paths.
    fn disk_and_tmpfs() -> Vec<tempfile::TempDir> {
        let shm = Path::new("/dev/shm");
        [tempfile::tempdir().ok(), shm.is_dir().then(|| tempfile::tempdir_in(shm).ok()).flatten()]
            .into_iter()
            .flatten()
            .collect()
    }

    #[test]
    fn direct_writer_writes_every_byte_in_order() {
        for dir in &disk_and_tmpfs() {
            // Pieces of awkward sizes crossing block boundaries, like 8 MiB segments minus tags.
            for total in [0, 1, DIRECT_ALIGN, DIRECT_BLOCK, DIRECT_BLOCK + 1, 2 * DIRECT_BLOCK + 12345] {
                let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
                let p = dir.path().join(format!("out-{total}"));
                let f = fs::File::create(&p).unwrap();
                let mut w = DirectWriter::new(&f).unwrap();
                for piece in data.chunks(DIRECT_BLOCK - 16) {
                    w.write_all(piece).unwrap();
                }
                w.finish().unwrap();
                assert!(fs::read(&p).unwrap() == data, "{} {total}", dir.path().display());
            }
        }
    }

    #[test]
    fn direct_and_buffered_writes_read_back() {
        for dir in &disk_and_tmpfs() {
            let mut aligned = AlignedBuf::with_capacity(DIRECT_ALIGN, 3 * DIRECT_ALIGN + 2);
            aligned.extend_from_slice(&[5u8; 3 * DIRECT_ALIGN]);
            aligned.extend_from_slice(&[7, 8]);
            let whole_pages = &aligned[..3 * DIRECT_ALIGN];
            // Whole pages, a short buffer, an unaligned start, and whole pages and a tail
            // (as shards of 1 MiB + 2 bytes).
            let cases = [("a", whole_pages), ("b", &[6u8; 100][..]), ("c", &aligned[1..]), ("d", &aligned[..])];
            for (name, data) in cases {
                let p = dir.path().join(name);
                write_durably(&p, data).unwrap();
                assert_eq!(&read_whole(&p).unwrap()[..], data, "{} {name}", dir.path().display());
            }
        }
    }

    #[test]
    fn temporary_names_are_unique_per_write() {
        let p = Path::new("/x/shard");
        assert_ne!(temporary_name(p), temporary_name(p));
        assert!(temporary_name(p).to_string_lossy().contains(TEMP_MARK));
    }

    #[test]
    fn secrets_are_private_from_the_first_byte() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/key");
        let made = read_or_create_secret(&p, || Ok(b"k".to_vec())).unwrap();
        assert_eq!(made, b"k");
        assert_eq!(read_or_create_secret(&p, || panic!("exists")).unwrap(), b"k");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(p.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn atomic_write_leaves_nothing_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let r: Result<(), AtomicWriteError> = write_atomically(&path, false, |f| {
            f.write_all(b"partial").unwrap();
            Err(AtomicWriteError::Exists { path: "x".into() })
        });
        assert!(r.is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let put = |overwrite, data: &'static [u8]| {
            write_atomically::<_, AtomicWriteError>(&path, overwrite, |f| {
                f.write_all(data).map_err(|source| AtomicWriteError::Io { path: "x".into(), source })
            })
        };
        put(false, b"x").unwrap();
        assert!(matches!(put(false, b"z"), Err(AtomicWriteError::Exists { .. })));
        put(true, b"y").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"y");
    }
}
