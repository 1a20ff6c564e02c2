//! Choosing peers for an upload's shards. Pure: the coordinator passes in what it knows.

/// A peer that may receive shards, with the bytes it can still take.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub peer_id: String,
    pub free: u64,
}

/// For each of `segments` segments, `n` distinct peers followed by up to `spares` more.
/// Greedy balance: each segment goes to the peers whose projected fill (bytes planned so
/// far plus this shard, over free space) is lowest, so load spreads over segments and
/// fuller peers get less. `None` when fewer than `n` peers can take a shard.
pub fn plan(peers: &[Candidate], segments: usize, n: usize, spares: usize, shard_len: u64) -> Option<Vec<Vec<String>>> {
    let usable: Vec<&Candidate> = peers.iter().filter(|p| p.free >= shard_len).collect();
    if usable.len() < n {
        return None;
    }
    let mut planned = vec![0u64; usable.len()];
    let mut out = Vec::with_capacity(segments);
    for _ in 0..segments {
        let mut order: Vec<usize> = (0..usable.len()).filter(|&i| planned[i] + shard_len <= usable[i].free).collect();
        if order.len() < n {
            return None;
        }
        let fill = |i: usize| (planned[i] + shard_len) as f64 / usable[i].free as f64;
        order.sort_by(|&a, &b| fill(a).total_cmp(&fill(b)).then_with(|| usable[a].peer_id.cmp(&usable[b].peer_id)));
        order.truncate(n + spares);
        for &i in &order[..n] {
            planned[i] += shard_len;
        }
        out.push(order.iter().map(|&i| usable[i].peer_id.clone()).collect());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn peers(frees: &[u64]) -> Vec<Candidate> {
        frees.iter().enumerate().map(|(i, &f)| Candidate { peer_id: format!("p{i:02}"), free: f }).collect()
    }

    #[test]
    fn distinct_balanced_and_weighted() {
        let ps = peers(&[1000; 30]);
        let plan = plan(&ps, 60, 20, 3, 1).unwrap();
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

        // A peer with ten times the space gets more shards.
        let mut ps = peers(&[100; 25]);
        ps[0].free = 1000;
        let plan = super::plan(&ps, 50, 20, 0, 1).unwrap();
        let big = plan.iter().filter(|s| s.contains(&"p00".to_string())).count();
        assert_eq!(big, 50);
    }

    #[test]
    fn too_few_or_too_full() {
        assert!(plan(&peers(&[10; 19]), 1, 20, 0, 1).is_none());
        assert!(plan(&peers(&[10; 20]), 11, 20, 0, 1).is_none());
        assert!(plan(&peers(&[10; 20]), 10, 20, 0, 1).is_some());
    }
}
