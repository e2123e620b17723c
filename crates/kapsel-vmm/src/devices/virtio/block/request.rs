//! Parsing of virtio-blk requests (virtio 5.2.6), the device's hostile
//! surface: a pure function of guest memory and a descriptor chain, so that
//! a fuzz target can drive it without a disk.
//!
//! Layout expected: a device-readable 16-byte header in the first
//! descriptor, data descriptors, and the status byte in the last descriptor
//! (device-writable; the status is its last byte).

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// Bytes per sector: the unit of every sector number and count.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Data descriptors per request the device advertises (VIRTIO_BLK_F_SEG_MAX).
pub const SEG_MAX: u32 = 126;
/// Descriptors per request: header + data + status.
pub const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// Most descriptors walked to find the end of a chain (the longest chain
/// virtio-queue can produce: an indirect table of 65535 descriptors).
pub const MAX_CHAIN_WALK: usize = 1 << 16;
/// Size of `struct virtio_blk_outhdr`.
pub const REQUEST_HEADER_SIZE: u32 = 16;
/// Segments per discard request (`max_discard_seg`).
pub const MAX_DISCARD_SEGMENTS: u32 = 1;
/// Segments per write-zeroes request (`max_write_zeroes_seg`).
pub const MAX_WRITE_ZEROES_SEGMENTS: u32 = 1;
/// Sectors per discard or write-zeroes segment (1 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// Size of `struct virtio_blk_discard_write_zeroes`.
const DISCARD_SEGMENT_SIZE: u64 = 16;
/// Bytes of the device ID string returned by GET_ID.
pub const ID_BYTES: usize = 20;

/// Request type: read.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush the write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: device ID string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Request type: discard sectors.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Request type: write zeroes.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
/// Write-zeroes flag: the device may deallocate the range.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: the request failed.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: the request type is not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// What the device is and what was negotiated: the request parser's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimits {
    /// Disk size in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Writes, discards and write-zeroes fail.
    pub read_only: bool,
    /// VIRTIO_BLK_F_DISCARD was negotiated.
    pub discard: bool,
    /// VIRTIO_BLK_F_WRITE_ZEROES was negotiated.
    pub write_zeroes: bool,
}

/// The kind of a valid request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Read into the data buffers.
    Read,
    /// Write from the data buffers.
    Write,
    /// Flush.
    Flush,
    /// Return the ID string.
    GetId,
    /// Discard [`Request::ranges`].
    Discard,
    /// Zero [`Request::ranges`].
    WriteZeroes,
}

/// One data buffer in guest memory, checked to lie inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical start.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A sector range of a discard or write-zeroes request, checked against
/// the capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectorRange {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// Write zeroes may deallocate.
    pub unmap: bool,
}

/// A request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub kind: RequestKind,
    /// First sector (reads and writes).
    pub sector: u64,
    /// Data buffers (reads, writes, GET_ID), in order.
    pub data: Vec<Segment>,
    /// Total bytes in `data`.
    pub data_len: u64,
    /// Sector ranges (discard, write zeroes).
    pub ranges: Vec<SectorRange>,
}

/// Why a request is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The last descriptor is not a device-writable buffer: no status can
    /// be returned.
    #[error("no device-writable status descriptor")]
    NoStatus,
    /// The header is missing, not device-readable, or not 16 bytes.
    #[error("bad request header")]
    BadHeader,
    /// More than [`MAX_DESCRIPTORS`] descriptors.
    #[error("too many descriptors")]
    TooManyDescriptors,
    /// A data buffer has the wrong direction for the request.
    #[error("data buffer with the wrong direction")]
    WrongDirection,
    /// Data length zero, not a multiple of 512, or malformed segments.
    #[error("bad data length")]
    BadLength,
    /// Sectors past the end of the disk.
    #[error("sector range past the end of the disk")]
    OutOfRange,
    /// A buffer lies outside guest memory.
    #[error("buffer outside guest memory")]
    BadAddress,
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// A request type or flag the device does not implement or did not
    /// negotiate.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
}

impl RequestError {
    /// The status byte reported to the driver.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// A parsed chain: where the status goes (if anywhere), and the request or
/// why it was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest {
    /// Guest address of the status byte; `None` when the chain has no
    /// usable status descriptor (the request is then dropped with used
    /// length 0).
    pub status: Option<GuestAddress>,
    /// The checked request.
    pub request: Result<Request, RequestError>,
}

/// Parses the chain `descriptors` of one request against `limits`. Never
/// panics, whatever the descriptors and memory hold; reads at most the
/// 16-byte header and discard segments from guest memory.
pub fn parse_request<M: GuestMemory>(
    mem: &M,
    descriptors: impl IntoIterator<Item = Descriptor>,
    limits: &DiskLimits,
) -> ParsedRequest {
    let mut descs = Vec::new();
    let mut count = 0usize;
    let mut last = None;
    for d in descriptors.into_iter().take(MAX_CHAIN_WALK + 1) {
        if descs.len() < MAX_DESCRIPTORS {
            descs.push(d);
        }
        last = Some(d);
        count += 1;
    }
    let status = last
        .filter(|d| count <= MAX_CHAIN_WALK && d.is_write_only() && d.len() >= 1)
        .and_then(|d| d.addr().0.checked_add(u64::from(d.len()) - 1))
        .map(GuestAddress);
    let request = if status.is_none() {
        Err(RequestError::NoStatus)
    } else if count > MAX_DESCRIPTORS {
        Err(RequestError::TooManyDescriptors)
    } else if count < 2 {
        Err(RequestError::BadHeader)
    } else {
        parse_checked(mem, &descs[..count], limits)
    };
    ParsedRequest { status, request }
}

/// Splits `spans` after `n` bytes: (the first n bytes, the rest). None when
/// they hold fewer than n bytes.
fn split_spans(spans: &[Segment], n: u64) -> Option<(Vec<Segment>, Vec<Segment>)> {
    let (mut front, mut back) = (Vec::new(), Vec::new());
    let mut left = n;
    for s in spans {
        let take = u64::from(s.len).min(left);
        if take > 0 {
            front.push(Segment {
                addr: s.addr,
                len: take as u32,
            });
        }
        if take < u64::from(s.len) {
            back.push(Segment {
                addr: GuestAddress(s.addr.0.checked_add(take)?),
                len: s.len - take as u32,
            });
        }
        left -= take;
    }
    (left == 0).then_some((front, back))
}

fn span_len(spans: &[Segment]) -> u64 {
    spans.iter().map(|s| u64::from(s.len)).sum()
}

/// Parses a whole chain as virtio 1.x frames it (any descriptor layout):
/// device-readable bytes (the 16-byte header, then data to write) come
/// before device-writable ones (data read, then the status byte, last).
fn parse_checked<M: GuestMemory>(
    mem: &M,
    descs: &[Descriptor],
    limits: &DiskLimits,
) -> Result<Request, RequestError> {
    let to_span = |d: &Descriptor| Segment {
        addr: d.addr(),
        len: d.len(),
    };
    let readable_count = descs.iter().take_while(|d| !d.is_write_only()).count();
    let (readable, writable) = descs.split_at(readable_count);
    if writable.iter().any(|d| !d.is_write_only()) {
        // A device-readable buffer after a device-writable one.
        return Err(RequestError::WrongDirection);
    }
    let readable: Vec<Segment> = readable.iter().map(to_span).collect();
    let writable: Vec<Segment> = writable.iter().map(to_span).collect();
    let (header, out_data) =
        split_spans(&readable, REQUEST_HEADER_SIZE.into()).ok_or(RequestError::BadHeader)?;
    // The status byte is the last writable byte; parse_request checked it.
    let in_len = span_len(&writable)
        .checked_sub(1)
        .ok_or(RequestError::BadHeader)?;
    let (in_data, _status) = split_spans(&writable, in_len).ok_or(RequestError::BadHeader)?;
    for s in &header {
        if !mem.check_range(s.addr, s.len as usize, Permissions::Read) {
            return Err(RequestError::BadAddress);
        }
    }
    let mut raw_header = [0u8; REQUEST_HEADER_SIZE as usize];
    let mut at = 0usize;
    for s in &header {
        let end = at + s.len as usize;
        mem.read_slice(&mut raw_header[at..end], s.addr)
            .map_err(|_| RequestError::BadAddress)?;
        at = end;
    }
    let request_type = u32::from_le_bytes(raw_header[0..4].try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(raw_header[8..16].try_into().unwrap_or_default());

    let (kind, writable) = match request_type {
        VIRTIO_BLK_T_IN => (RequestKind::Read, true),
        VIRTIO_BLK_T_OUT => (RequestKind::Write, false),
        VIRTIO_BLK_T_FLUSH => (RequestKind::Flush, false),
        VIRTIO_BLK_T_GET_ID => (RequestKind::GetId, true),
        VIRTIO_BLK_T_DISCARD if limits.discard => (RequestKind::Discard, false),
        VIRTIO_BLK_T_WRITE_ZEROES if limits.write_zeroes => (RequestKind::WriteZeroes, false),
        t => return Err(RequestError::Unsupported(t)),
    };
    if limits.read_only
        && matches!(
            kind,
            RequestKind::Write | RequestKind::Discard | RequestKind::WriteZeroes
        )
    {
        return Err(RequestError::ReadOnly);
    }

    // Data flows one way: the other direction may hold nothing but the
    // header (readable) or the status (writable).
    let (data, unused) = if writable {
        (in_data, out_data)
    } else {
        (out_data, in_data)
    };
    if !unused.is_empty() {
        return Err(RequestError::WrongDirection);
    }
    let access = if writable {
        Permissions::Write
    } else {
        Permissions::Read
    };
    let mut segments = Vec::with_capacity(data.len());
    let mut data_len: u64 = 0;
    for d in data {
        let len = usize::try_from(d.len).map_err(|_| RequestError::BadLength)?;
        if !mem.check_range(d.addr, len, access) {
            return Err(RequestError::BadAddress);
        }
        // At most 128 segments of < 4 GiB: cannot overflow, checked anyway.
        data_len = data_len
            .checked_add(u64::from(d.len))
            .ok_or(RequestError::BadLength)?;
        segments.push(d);
    }

    let mut ranges = Vec::new();
    match kind {
        RequestKind::Read | RequestKind::Write => {
            if data_len == 0 || !data_len.is_multiple_of(SECTOR_SIZE) {
                return Err(RequestError::BadLength);
            }
            check_range(sector, data_len >> SECTOR_SHIFT, limits)?;
        }
        RequestKind::Flush => {}
        RequestKind::GetId => {
            if data_len == 0 {
                return Err(RequestError::BadLength);
            }
        }
        RequestKind::Discard | RequestKind::WriteZeroes => {
            let max_segments = if kind == RequestKind::Discard {
                MAX_DISCARD_SEGMENTS
            } else {
                MAX_WRITE_ZEROES_SEGMENTS
            };
            let n = data_len / DISCARD_SEGMENT_SIZE;
            if data_len == 0
                || !data_len.is_multiple_of(DISCARD_SEGMENT_SIZE)
                || n > u64::from(max_segments)
            {
                return Err(RequestError::BadLength);
            }
            let mut raw = vec![0u8; data_len as usize];
            let mut at = 0usize;
            for s in &segments {
                let end = at + s.len as usize;
                mem.read_slice(&mut raw[at..end], s.addr)
                    .map_err(|_| RequestError::BadAddress)?;
                at = end;
            }
            for seg in raw.chunks_exact(DISCARD_SEGMENT_SIZE as usize) {
                let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
                let num_sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
                let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
                let allowed_flags = if kind == RequestKind::WriteZeroes {
                    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
                } else {
                    0
                };
                if flags & !allowed_flags != 0 {
                    return Err(RequestError::Unsupported(request_type));
                }
                if num_sectors > MAX_DISCARD_SECTORS {
                    return Err(RequestError::BadLength);
                }
                check_range(sector, u64::from(num_sectors), limits)?;
                ranges.push(SectorRange {
                    sector,
                    num_sectors,
                    unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
                });
            }
            segments.clear();
            data_len = 0;
        }
    }
    Ok(Request {
        kind,
        sector,
        data: segments,
        data_len,
        ranges,
    })
}

fn check_range(sector: u64, num_sectors: u64, limits: &DiskLimits) -> Result<(), RequestError> {
    match sector.checked_add(num_sectors) {
        Some(end) if end <= limits.capacity_sectors => Ok(()),
        _ => Err(RequestError::OutOfRange),
    }
}
