//! Choosing peers for an upload's shards. Pure: the coordinator passes in what it knows.
//!
//! What a liar cannot capture:
//! - **Declared capacity is a limit, not a weight.** A peer is never given more than it
//!   declares free, but shards go to the peers whose *believed* capacity is least filled, and
//!   belief grows only with what a peer has stored and been audited on ([`believed`]): a peer
//!   declaring 10^18 bytes is weighted like any newcomer.
//! - **One failure domain, one shard per segment.** Every shard of a segment, spares
//!   included, goes to a distinct domain ([`domain`]): with `spread = "subnet"` one operator's
//!   many keys in one /24 (or IPv6 /64) hold at most one shard of any segment.
//! - **Newcomers get a bounded share.** At most `max_vetting` shards of a segment go to peers
//!   still being vetted, unless too few vetted peers exist (a young network).

use std::collections::HashSet;
use std::net::IpAddr;

/// A peer that may receive shards.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub peer_id: String,
    /// Bytes it declares free: never exceeded.
    pub free: u64,
    /// Bytes it is believed to have ([`believed`]): what the balancing weighs.
    pub weight: u64,
    /// Its failure domain ([`domain`]).
    pub domain: String,
    pub vetting: bool,
}

/// How far apart the shards of a segment must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Spread {
    /// Every peer is its own domain.
    None,
    /// One domain per IP address.
    Host,
    /// One domain per IPv4 /24 or IPv6 /64.
    Subnet,
}

/// A peer's failure domain. Loopback addresses are one domain per port in every mode, so a
/// network of nodes on one machine (devnet, nodes started one by one) places as before.
pub fn domain(peer_id: &str, ip: Option<IpAddr>, port: u16, spread: Spread) -> String {
    let Some(ip) = ip else { return format!("peer {peer_id}") };
    if spread == Spread::None {
        return format!("peer {peer_id}");
    }
    if ip.is_loopback() {
        return format!("{ip} port {port}");
    }
    match (spread, ip) {
        (Spread::Subnet, IpAddr::V4(v4)) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        (Spread::Subnet, IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        _ => ip.to_string(),
    }
}

/// The capacity a peer is believed to have: `credit` for a peer not yet vetted, and for a
/// vetted one `credit` plus twice what it holds and has been audited on; never more than it
/// declares free.
pub fn believed(declared_free: u64, audited_bytes: u64, vetted: bool, credit: u64) -> u64 {
    let earned = if vetted { credit.saturating_add(audited_bytes.saturating_mul(2)) } else { credit };
    declared_free.min(earned)
}

/// What a plan must respect.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Shards per segment.
    pub n: usize,
    /// Spare peers per segment beyond n, for shards whose first peer fails.
    pub spares: usize,
    pub shard_len: u64,
    /// Shards of one segment that may go to peers still being vetted, while enough vetted
    /// peers exist.
    pub max_vetting: usize,
}

/// For each of `segments` segments, `n` peers in distinct domains followed by up to
/// `spares` more (also in domains of their own). Greedy balance: each segment goes to the
/// peers whose believed fill (bytes planned so far plus this shard, over believed capacity)
/// is lowest. `None` when fewer than `n` domains can take a shard.
pub fn plan(peers: &[Candidate], segments: usize, r: Rules) -> Option<Vec<Vec<String>>> {
    let mut planned = vec![0u64; peers.len()];
    let mut out = Vec::with_capacity(segments);
    for _ in 0..segments {
        let mut order: Vec<usize> =
            (0..peers.len()).filter(|&i| planned[i].saturating_add(r.shard_len) <= peers[i].free).collect();
        let fill = |i: usize| (planned[i] + r.shard_len) as f64 / peers[i].weight.max(1) as f64;
        order.sort_by(|&a, &b| fill(a).total_cmp(&fill(b)).then_with(|| peers[a].peer_id.cmp(&peers[b].peer_id)));
        let chosen = choose(peers, &order, r)?;
        for &i in &chosen[..r.n] {
            planned[i] += r.shard_len;
        }
        out.push(chosen.iter().map(|&i| peers[i].peer_id.clone()).collect());
    }
    Some(out)
}

/// n + spares peers of distinct domains from `order` (best first): vetted peers and at most
/// `max_vetting` vetting ones first, more vetting ones only if that left the segment short.
fn choose(peers: &[Candidate], order: &[usize], r: Rules) -> Option<Vec<usize>> {
    let want = r.n + r.spares;
    let mut chosen = Vec::with_capacity(want);
    let mut domains = HashSet::new();
    let mut vetting = 0;
    for relaxed in [false, true] {
        for &i in order {
            if chosen.len() == want {
                break;
            }
            let p = &peers[i];
            let capped = p.vetting && !relaxed && vetting >= r.max_vetting;
            if capped || chosen.contains(&i) || domains.contains(&p.domain) {
                continue;
            }
            domains.insert(p.domain.clone());
            vetting += p.vetting as usize;
            chosen.push(i);
        }
        if chosen.len() == want {
            break;
        }
    }
    (chosen.len() >= r.n).then_some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn peers(frees: &[u64]) -> Vec<Candidate> {
        frees
            .iter()
            .enumerate()
            .map(|(i, &f)| Candidate {
                peer_id: format!("p{i:02}"),
                free: f,
                weight: f,
                domain: format!("d{i:02}"),
                vetting: false,
            })
            .collect()
    }

    fn rules(n: usize, spares: usize, shard_len: u64) -> Rules {
        Rules { n, spares, shard_len, max_vetting: n }
    }

    #[test]
    fn distinct_balanced_and_weighted() {
        let ps = peers(&[1000; 30]);
        let plan = plan(&ps, 60, rules(20, 3, 1)).unwrap();
        let mut load: HashMap<&str, usize> = HashMap::new();
        for seg in &plan {
            assert_eq!(seg.len(), 23);
            assert_eq!(seg.iter().collect::<HashSet<_>>().len(), 23);
            for p in &seg[..20] {
                *load.entry(p).or_default() += 1;
            }
        }
        let (min, max) = (load.values().min().unwrap(), load.values().max().unwrap());
        assert!(max - min <= 1, "{load:?}");

        // A peer believed to have ten times the space gets more shards.
        let mut ps = peers(&[100; 25]);
        ps[0].free = 1000;
        ps[0].weight = 1000;
        let plan = super::plan(&ps, 50, rules(20, 0, 1)).unwrap();
        assert_eq!(plan.iter().filter(|s| s.contains(&"p00".to_string())).count(), 50);
    }

    #[test]
    fn a_declared_capacity_is_a_limit_not_a_weight() {
        // Six liars declaring 10^18 bytes, believed like newcomers: they get their share, no
        // more, and never every slot.
        let mut ps = peers(&[1000; 20]);
        for p in ps.iter_mut().take(6) {
            p.free = 1_000_000_000_000_000_000;
        }
        let plan = plan(&ps, 40, rules(8, 0, 1)).unwrap();
        let liars = plan.iter().flatten().filter(|p| ps[..6].iter().any(|l| &&l.peer_id == p)).count();
        assert!(liars <= 40 * 8 * 6 / 20 + 6, "{liars} of 320 shards on 6 of 20 peers");
        assert_eq!(believed(u64::MAX, 0, false, 10), 10);
        assert_eq!(believed(u64::MAX, 100, true, 10), 210);
        assert_eq!(believed(50, 100, true, 10), 50);
        assert_eq!(believed(u64::MAX, u64::MAX, true, u64::MAX), u64::MAX, "saturates");
    }

    #[test]
    fn newcomers_get_a_bounded_share_unless_there_is_no_one_else() {
        let mut ps = peers(&[1000; 30]);
        for p in ps.iter_mut().take(10) {
            p.vetting = true;
        }
        let r = Rules { n: 20, spares: 0, shard_len: 1, max_vetting: 2 };
        for seg in plan(&ps, 10, r).unwrap() {
            assert!(seg.iter().filter(|p| ps[..10].iter().any(|v| &&v.peer_id == p)).count() <= 2);
        }
        // Only 15 vetted peers: 5 newcomers must help, and do.
        let r = Rules { max_vetting: 2, ..r };
        let young = &ps[5..];
        assert!(plan(young, 3, r).is_some());
    }

    #[test]
    fn too_few_or_too_full() {
        assert!(plan(&peers(&[10; 19]), 1, rules(20, 0, 1)).is_none());
        assert!(plan(&peers(&[10; 20]), 11, rules(20, 0, 1)).is_none());
        assert!(plan(&peers(&[10; 20]), 10, rules(20, 0, 1)).is_some());
        // Twenty peers, but only ten domains.
        let mut ps = peers(&[10; 20]);
        for (i, p) in ps.iter_mut().enumerate() {
            p.domain = format!("d{}", i % 10);
        }
        assert!(plan(&ps, 1, rules(20, 0, 1)).is_none());
        assert_eq!(plan(&ps, 1, rules(8, 5, 1)).unwrap()[0].len(), 10, "spares only in unused domains");
    }

    #[test]
    fn domains_by_spread() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(domain("a", ip("10.1.2.3"), 9, Spread::Subnet), domain("b", ip("10.1.2.200"), 7, Spread::Subnet));
        assert_ne!(domain("a", ip("10.1.2.3"), 9, Spread::Subnet), domain("b", ip("10.1.3.3"), 9, Spread::Subnet));
        assert_ne!(domain("a", ip("10.1.2.3"), 9, Spread::Host), domain("b", ip("10.1.2.4"), 9, Spread::Host));
        assert_eq!(domain("a", ip("10.1.2.3"), 9, Spread::Host), domain("b", ip("10.1.2.3"), 8, Spread::Host));
        assert_ne!(domain("a", ip("10.1.2.3"), 9, Spread::None), domain("b", ip("10.1.2.3"), 9, Spread::None));
        let v6 = |s| domain("a", ip(s), 1, Spread::Subnet);
        assert_eq!(v6("2001:db8:1:2::1"), v6("2001:db8:1:2:ffff::9"));
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        // Loopback: one domain per port, whatever the spread.
        assert_ne!(
            domain("a", ip("127.0.0.1"), 9001, Spread::Subnet),
            domain("b", ip("127.0.0.1"), 9002, Spread::Subnet)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn subnet_spread_never_puts_two_shards_of_a_segment_in_one_subnet(
            hosts in proptest::collection::vec((0u8..4, 0u8..6, any::<bool>(), 1u64..50), 1..60),
            n in 1usize..12,
            spares in 0usize..4,
            segments in 1usize..8,
        ) {
            let ps: Vec<Candidate> = hosts
                .iter()
                .enumerate()
                .map(|(i, &(subnet, host, vetting, free))| {
                    let ip: IpAddr = format!("10.0.{subnet}.{host}").parse().unwrap();
                    Candidate {
                        peer_id: format!("p{i}"),
                        free,
                        weight: free,
                        domain: domain(&format!("p{i}"), Some(ip), 9000, Spread::Subnet),
                        vetting,
                    }
                })
                .collect();
            let by_id: HashMap<&str, &Candidate> = ps.iter().map(|p| (p.peer_id.as_str(), p)).collect();
            if let Some(plan) = plan(&ps, segments, Rules { n, spares, shard_len: 1, max_vetting: 2 }) {
                for seg in plan {
                    prop_assert!(seg.len() >= n);
                    let subnets: HashSet<&str> = seg.iter().map(|p| by_id[p.as_str()].domain.as_str()).collect();
                    prop_assert_eq!(subnets.len(), seg.len());
                }
            } else if segments == 1 {
                // One segment is refused only when there are fewer than n subnets.
                let subnets: HashSet<u8> = hosts.iter().map(|h| h.0).collect();
                prop_assert!(subnets.len() < n);
            }
        }
    }
}
