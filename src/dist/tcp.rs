//! The rendezvous at `MASTER_ADDR:MASTER_PORT` and a star-shaped TCP communicator.
//!
//! Rendezvous: rank 0 listens on the port; every other rank connects (retrying until the
//! timeout, since rank 0 may start later) and says hello (rank, world size, a job token: the
//! caller's fingerprint of the configuration, so that ranks started with different settings
//! stop at once instead of training different models). When all `world - 1` ranks are there,
//! rank 0 hands every rank the same payload (NCCL's unique id for a GPU job; empty for a CPU
//! job). Any failure names the rank and the address.
//!
//! The connections then carry host collectives: each rank sends its buffer to rank 0, which
//! sends every buffer back to every rank; each rank then sums in rank order (the same bits on
//! every rank, and the same as the thread stand-in). That is `world` times the traffic of a ring
//! all-reduce: it is meant for CPU jobs (tiny models, tests) and for the few small messages
//! of a GPU job (barrier, metric counts), not for a GPU job's gradients (NCCL's job).
//!
//! Faults: rank 0 waiting for a rank names it (timeout or closed connection) and tells the
//! others before it stops ("abort" frame); a rank waiting for rank 0 names rank 0.

use super::local::{concat_f32, pick_f32, sum_f32, sum_f64, Deposit, TIMEOUT_HELP};
use super::Communicator;
use crate::{Error, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"MPMRDV01";
const KIND_F32: u8 = 1;
const KIND_F64: u8 = 2;
const KIND_ABORT: u8 = 0xFF;

/// One rank's end of a TCP star (rank 0 holds a stream per other rank; the others one stream
/// to rank 0).
pub struct TcpComm {
    rank: usize,
    world: usize,
    timeout: Duration,
    /// Rank 0: streams of ranks 1.. in order. Other ranks: the stream to rank 0.
    peers: Mutex<Vec<TcpStream>>,
    /// What rank 0 handed out at the rendezvous.
    payload: Vec<u8>,
    round: Mutex<u64>,
}

fn io_err(what: &str, e: std::io::Error) -> Error {
    Error::Msg(format!("{what}: {e}"))
}

fn write_frame(s: &mut TcpStream, kind: u8, bytes: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; 9];
    head[0] = kind;
    head[1..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    s.write_all(&head)?;
    s.write_all(bytes)?;
    s.flush()
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head)?;
    let len = u64::from_le_bytes(head[1..].try_into().unwrap_or([0; 8])) as usize;
    // A corrupted length must not allocate the machine's memory.
    if len > (1 << 34) {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((head[0], body))
}

fn encode(d: &Deposit) -> (u8, Vec<u8>) {
    match d {
        Deposit::F32(v) => (KIND_F32, bytemuck::cast_slice(v).to_vec()),
        Deposit::F64(v) => (KIND_F64, bytemuck::cast_slice(v).to_vec()),
    }
}

fn decode(kind: u8, bytes: &[u8]) -> std::result::Result<Deposit, String> {
    let bad = || format!("a frame of kind {kind} with {} bytes", bytes.len());
    match kind {
        KIND_F32 if bytes.len() % 4 == 0 => Ok(Deposit::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )),
        KIND_F64 if bytes.len() % 8 == 0 => Ok(Deposit::F64(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        )),
        KIND_ABORT => Err(String::from_utf8_lossy(bytes).into_owned()),
        _ => Err(bad()),
    }
}

/// Why a read from `rank` failed, in words.
fn peer_failure(rank: usize, e: &std::io::Error, timeout: Duration) -> String {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
            "rank {rank} did not answer within {:.1} s (hung or dead; the timeout is \
             {TIMEOUT_HELP})",
            timeout.as_secs_f64()
        ),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
            format!("rank {rank} is gone (its connection closed: it exited or failed)")
        }
        _ => format!("rank {rank}: {e}"),
    }
}

/// Rank 0's side of the rendezvous: listens on `addr:port` until `world - 1` ranks said hello
/// with `token`, then sends each `payload`.
pub fn serve(
    addr: &str,
    port: u16,
    world: usize,
    token: &[u8],
    payload: &[u8],
    timeout: Duration,
) -> Result<TcpComm> {
    let listener = TcpListener::bind((addr, port))
        .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
        .map_err(|e| {
            Error::flag(
                "MASTER_PORT",
                format!(
                    "rank 0 cannot listen on {addr}:{port}: {e} (is another job using the port?)"
                ),
            )
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("rendezvous listener", e))?;
    let deadline = Instant::now() + timeout;
    let mut peers: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
    let mut joined = 1;
    while joined < world {
        match listener.accept() {
            Ok((mut s, from)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(10).min(timeout)));
                match read_hello(&mut s, world, token) {
                    Ok(r) if peers[r].is_none() => {
                        peers[r] = Some(s);
                        joined += 1;
                    }
                    Ok(r) => {
                        let msg = format!("rank {r} joined twice (second from {from})");
                        let _ = write_frame(&mut s, KIND_ABORT, msg.as_bytes());
                        return Err(abort_all(&mut peers, format!("rendezvous: {msg}")));
                    }
                    Err(msg) => {
                        let _ = write_frame(&mut s, KIND_ABORT, msg.as_bytes());
                        return Err(abort_all(
                            &mut peers,
                            format!("rendezvous: a process from {from}: {msg}"),
                        ));
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (1..world).filter(|&r| peers[r].is_none()).collect();
                    return Err(abort_all(
                        &mut peers,
                        format!(
                            "rendezvous at {addr}:{port}: rank(s) {missing:?} of {world} did not \
                             connect within {:.1} s (not started, wrong MASTER_ADDR/MASTER_PORT, \
                             or a firewall; the timeout is {TIMEOUT_HELP})",
                            timeout.as_secs_f64()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io_err("rendezvous accept", e)),
        }
    }
    let mut streams: Vec<TcpStream> = peers.into_iter().skip(1).flatten().collect();
    for (i, s) in streams.iter_mut().enumerate() {
        write_frame(s, 0, payload)
            .map_err(|e| Error::Msg(format!("rendezvous: {}", peer_failure(i + 1, &e, timeout))))?;
        let _ = s.set_read_timeout(Some(timeout));
        let _ = s.set_write_timeout(Some(timeout));
    }
    Ok(TcpComm {
        rank: 0,
        world,
        timeout,
        peers: Mutex::new(streams),
        payload: payload.to_vec(),
        round: Mutex::new(0),
    })
}

fn abort_all(peers: &mut [Option<TcpStream>], msg: String) -> Error {
    for s in peers.iter_mut().flatten() {
        let _ = write_frame(s, KIND_ABORT, msg.as_bytes());
    }
    Error::Msg(msg)
}

/// Reads a hello; returns the rank, or why it is refused.
fn read_hello(s: &mut TcpStream, world: usize, token: &[u8]) -> std::result::Result<usize, String> {
    let (kind, body) = read_frame(s).map_err(|e| format!("no hello: {e}"))?;
    if kind != 0 || body.len() < 16 || &body[..8] != MAGIC {
        return Err("not an mpm rank (bad hello)".into());
    }
    let rank = u32::from_le_bytes(body[8..12].try_into().unwrap_or([0; 4])) as usize;
    let w = u32::from_le_bytes(body[12..16].try_into().unwrap_or([0; 4])) as usize;
    if w != world {
        return Err(format!(
            "rank {rank} says the world size is {w}, rank 0 says {world}"
        ));
    }
    if rank == 0 || rank >= world {
        return Err(format!("rank {rank} is not in 1..{world}"));
    }
    if &body[16..] != token {
        return Err(format!(
            "rank {rank} runs a different configuration than rank 0 (job token differs): \
             start every rank with the same command and files"
        ));
    }
    Ok(rank)
}

/// A non-zero rank's side: connects to `addr:port` (retrying until the timeout), says hello,
/// waits for rank 0's payload.
pub fn join(
    addr: &str,
    port: u16,
    rank: usize,
    world: usize,
    token: &[u8],
    timeout: Duration,
) -> Result<TcpComm> {
    let deadline = Instant::now() + timeout;
    let mut last_err = String::from("no attempt");
    let mut stream = None;
    while Instant::now() < deadline {
        let addrs: Vec<_> = match (addr, port).to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                last_err = format!("cannot resolve '{addr}': {e}");
                Vec::new()
            }
        };
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        if stream.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(mut s) = stream else {
        return Err(Error::Msg(format!(
            "rendezvous: rank {rank} could not reach rank 0 at {addr}:{port} within {:.1} s \
             ({last_err}); check MASTER_ADDR/MASTER_PORT and that rank 0 runs (the timeout is \
             {TIMEOUT_HELP})",
            timeout.as_secs_f64()
        )));
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&(rank as u32).to_le_bytes());
    hello.extend_from_slice(&(world as u32).to_le_bytes());
    hello.extend_from_slice(token);
    write_frame(&mut s, 0, &hello).map_err(|e| io_err("rendezvous hello", e))?;
    let (kind, payload) = read_frame(&mut s).map_err(|e| {
        Error::Msg(format!(
            "rendezvous at {addr}:{port}: {}",
            peer_failure(0, &e, timeout)
        ))
    })?;
    if kind == KIND_ABORT {
        return Err(Error::Msg(format!(
            "rendezvous: rank 0 refused rank {rank}: {}",
            String::from_utf8_lossy(&payload)
        )));
    }
    Ok(TcpComm {
        rank,
        world,
        timeout,
        peers: Mutex::new(vec![s]),
        payload,
        round: Mutex::new(0),
    })
}

impl TcpComm {
    /// What rank 0 handed out at the rendezvous.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// One round: every rank's deposit, in rank order.
    fn exchange(&self, what: &str, mine: Deposit) -> Result<Vec<Deposit>> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut round = self.round.lock().unwrap_or_else(|p| p.into_inner());
        *round += 1;
        let n = *round;
        let fail = |m: String| {
            Error::Msg(format!(
                "distributed {what} (collective #{n}): {m}; rank {} stops",
                self.rank
            ))
        };
        if self.rank == 0 {
            let mut all = vec![mine];
            for (i, s) in peers.iter_mut().enumerate() {
                let got = read_frame(s)
                    .map_err(|e| peer_failure(i + 1, &e, self.timeout))
                    .and_then(|(k, b)| decode(k, &b).map_err(|m| format!("rank {}: {m}", i + 1)));
                match got {
                    Ok(d) => all.push(d),
                    Err(m) => {
                        for s in peers.iter_mut() {
                            let _ = write_frame(s, KIND_ABORT, m.as_bytes());
                        }
                        return Err(fail(m));
                    }
                }
            }
            // Every deposit to every rank, rank order.
            let frames: Vec<(u8, Vec<u8>)> = all.iter().map(encode).collect();
            for (i, s) in peers.iter_mut().enumerate() {
                for (k, b) in &frames {
                    write_frame(s, *k, b)
                        .map_err(|e| fail(peer_failure(i + 1, &e, self.timeout)))?;
                }
            }
            return Ok(all);
        }
        let s = &mut peers[0];
        let (k, b) = encode(&mine);
        write_frame(s, k, &b).map_err(|e| fail(peer_failure(0, &e, self.timeout)))?;
        let mut all = Vec::with_capacity(self.world);
        for _ in 0..self.world {
            let (k, b) = read_frame(s).map_err(|e| fail(peer_failure(0, &e, self.timeout)))?;
            all.push(decode(k, &b).map_err(|m| fail(format!("rank 0 reports: {m}")))?);
        }
        Ok(all)
    }
}

impl Communicator for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn backend(&self) -> &'static str {
        "tcp"
    }
    super::local::exchange_collectives!();
}

/// The rendezvous of this process's rank (`serve` on rank 0, `join` elsewhere).
pub fn rendezvous(
    env: &super::RankEnv,
    token: &[u8],
    payload: &[u8],
    timeout: Duration,
) -> Result<TcpComm> {
    if env.rank == 0 {
        serve(
            &env.master_addr,
            env.master_port,
            env.world,
            token,
            payload,
            timeout,
        )
    } else {
        join(
            &env.master_addr,
            env.master_port,
            env.rank,
            env.world,
            token,
            timeout,
        )
    }
}
