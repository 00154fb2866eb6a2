//! The soak: a copas echo server in this process under a churn of connections from a child
//! process, checked for leaked descriptors, growing memory, corrupted echoes and handler
//! panics (issue 7).
//!
//! Shared by `benches/soak.rs` (the long runs, `cargo bench --bench soak`) and
//! `tests/soak_short.rs` (a few seconds in `cargo test`, so the machinery cannot rot
//! unnoticed). Both include this directory with `#[path]`; each says how to start the client
//! process ([`server::serve`] takes the command), the client role reads its [`Plan`] from
//! the environment ([`clients::run`]).
//!
//! - `server.rs`: the echo server, the per-interval report, the checks at the end.
//! - `clients.rs`: the client mix, one blocking thread per live connection.

#![allow(dead_code)]

pub mod clients;
pub mod server;

use std::path::PathBuf;
use std::time::Duration;

/// The environment variable that carries the [`Plan`] to the client process.
pub const PLAN_VAR: &str = "COPAS_SOAK_PLAN";

/// Plain TCP or TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Raw bytes over TCP.
    Tcp,
    /// The same echo behind `copas::handler` (server) and `native-tls` (clients).
    Tls,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Tls => "tls",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "tcp" => Some(Kind::Tcp),
            "tls" => Some(Kind::Tls),
            _ => None,
        }
    }
}

/// What one soak run does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: Kind,
    /// How long the clients keep opening connections.
    pub duration: Duration,
    /// Connections kept live (one client thread each).
    pub conns: usize,
    /// Seeds every client thread's generator (thread `i` uses a stream derived from it), so
    /// a run's choices can be replayed; timing still differs.
    pub seed: u64,
    /// The server's timeout for every receive, send and handshake: a stalled client is
    /// closed after it.
    pub server_timeout: Duration,
    /// Memory is compared between the end of this warm-up and the end of the run.
    pub warmup: Duration,
    /// How often a report line is printed (and the clients report their counts).
    pub report_every: Duration,
    /// Memory counts as flat when it grows by at most this many percent of the warm-up
    /// figure, or by `rss_margin_kib`, whichever is larger.
    pub rss_margin_pct: u64,
    pub rss_margin_kib: u64,
    /// How much more memory the server may hold with no connection open after the run
    /// than before it.
    pub idle_margin_kib: u64,
    /// The test PKI (TLS only): the clients trust `ca.pem` in it.
    pub pki: Option<PathBuf>,
    /// The server's port; set by [`server::serve`] before the clients start.
    pub port: u16,
}

impl Plan {
    /// A plan with the defaults of the long soak for `kind`.
    pub fn new(kind: Kind, duration: Duration, conns: usize, seed: u64) -> Plan {
        Plan {
            kind,
            duration,
            conns,
            seed,
            server_timeout: Duration::from_secs(2),
            warmup: (duration / 3).min(Duration::from_secs(10)),
            report_every: Duration::from_secs(5),
            rss_margin_pct: 10,
            rss_margin_kib: 4 * 1024,
            idle_margin_kib: 1024,
            pki: None,
            port: 0,
        }
    }

    /// The plan as one line of `key=value` words, for [`PLAN_VAR`].
    pub fn encode(&self) -> String {
        format!(
            "kind={} ms={} conns={} seed={} timeout_ms={} every_ms={} port={} pki={}",
            self.kind.as_str(),
            self.duration.as_millis(),
            self.conns,
            self.seed,
            self.server_timeout.as_millis(),
            self.report_every.as_millis(),
            self.port,
            self.pki
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string()),
        )
    }

    /// Reads what [`Plan::encode`] wrote; `None` if a field is missing or does not parse.
    pub fn decode(line: &str) -> Option<Plan> {
        let words = Words::new(line);
        let ms = |key: &str| words.num(key).map(Duration::from_millis);
        let mut plan = Plan::new(
            Kind::parse(words.get("kind")?)?,
            ms("ms")?,
            words.num("conns")? as usize,
            words.num("seed")?,
        );
        plan.server_timeout = ms("timeout_ms")?;
        plan.report_every = ms("every_ms")?;
        plan.port = words.num("port")? as u16;
        plan.pki = words
            .get("pki")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        Some(plan)
    }
}

/// `key=value` words of one line (values without spaces).
pub struct Words<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Words<'a> {
    pub fn new(line: &'a str) -> Words<'a> {
        Words {
            pairs: line
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .collect(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    pub fn num(&self, key: &str) -> Option<u64> {
        self.get(key)?.parse().ok()
    }
}

/// What the clients counted, cumulative. The client process prints it as a line
/// `@tally key=value …` every report interval and `@done key=value …` at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Connections open now.
    pub live: u64,
    /// Connections opened.
    pub opened: u64,
    /// Echo exchanges whose whole reply was read and matched byte for byte (plain exchanges,
    /// half-closes, short stalls).
    pub exchanges: u64,
    /// Bytes of those exchanges (each direction counted once).
    pub bytes: u64,
    /// Connections reset (`SO_LINGER` 0, then close) in the middle of sending or receiving.
    pub resets: u64,
    /// Connections half-closed (shutdown of the write side, or TLS `close_notify`), then read
    /// to the end.
    pub half_closes: u64,
    /// Stalls shorter than the server's timeout, after which the exchange went on.
    pub short_stalls: u64,
    /// Stalls longer than the server's timeout; the server must have closed the connection
    /// (after echoing what it had received).
    pub long_stalls: u64,
    /// Replies that differed from what was sent: must stay 0.
    pub corrupt: u64,
    /// Connections that failed where they should not have (an error or early end of stream
    /// in an exchange, a stalled connection the server did not close): must stay 0.
    pub errors: u64,
    /// Connections the server closed after this client, kept off the CPU, had left it
    /// waiting longer than its timeout (a short stall that overslept, a handshake that took
    /// too long): the server was right; counted apart, not as errors.
    pub late: u64,
}

impl Tally {
    const FIELDS: [&'static str; 11] = [
        "live",
        "opened",
        "exchanges",
        "bytes",
        "resets",
        "half_closes",
        "short_stalls",
        "long_stalls",
        "corrupt",
        "errors",
        "late",
    ];

    fn values(&self) -> [u64; 11] {
        [
            self.live,
            self.opened,
            self.exchanges,
            self.bytes,
            self.resets,
            self.half_closes,
            self.short_stalls,
            self.long_stalls,
            self.corrupt,
            self.errors,
            self.late,
        ]
    }

    pub fn encode(&self) -> String {
        Self::FIELDS
            .iter()
            .zip(self.values())
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn decode(line: &str) -> Tally {
        let w = Words::new(line);
        let n = |k: &str| w.num(k).unwrap_or(0);
        Tally {
            live: n("live"),
            opened: n("opened"),
            exchanges: n("exchanges"),
            bytes: n("bytes"),
            resets: n("resets"),
            half_closes: n("half_closes"),
            short_stalls: n("short_stalls"),
            long_stalls: n("long_stalls"),
            corrupt: n("corrupt"),
            errors: n("errors"),
            late: n("late"),
        }
    }
}

/// SplitMix64: small, fast, and good enough to pick behaviours and fill payloads; the same
/// seed gives the same choices.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
}

/// A seed from the clock and the process id, for runs that were not given one.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Rng::new(nanos ^ u64::from(std::process::id()) << 32).next_u64()
}
