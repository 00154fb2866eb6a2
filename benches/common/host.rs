//! What a benchmark ran on, for its header: the CPU's model name with its family, model and
//! cache size. In a virtual machine the name alone ("AMD EPYC") does not tell one generation
//! from another, and the figures move between them (docs/benchmarks.md, "Machine").
//! Shared by the bench binaries (`#[path = "common/host.rs"] mod host;`).

/// "AMD EPYC, family 26 model 2, cache 1024 KB", from `/proc/cpuinfo`'s first CPU;
/// "unknown CPU" without it.
pub fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim() == name)
            .map(|(_, value)| value.trim().to_string())
    };
    let Some(mut out) = field("model name") else {
        return "unknown CPU".into();
    };
    if let (Some(family), Some(model)) = (field("cpu family"), field("model")) {
        out.push_str(&format!(", family {family} model {model}"));
    }
    if let Some(cache) = field("cache size") {
        out.push_str(&format!(", cache {cache}"));
    }
    out
}
