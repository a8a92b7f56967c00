//! Several nodes in one run (`--url` given more than once, or as a list): which node each
//! connection goes to and from which source address.
//!
//! With one node every connection goes to it and keeps its source address, so a single
//! `--url` run behaves exactly as it did before.

/// The node connection `index` goes to (round-robin: node k gets k, k + N, ...) and its rank
/// among that node's connections, which picks its source address: each (source address,
/// node) pair then carries `--per-addr` connections, the ephemeral-port budget being per pair.
pub fn node_of(index: usize, nodes: usize) -> (usize, usize) {
    let n = nodes.max(1);
    (index % n, index / n)
}

/// How many of `conns` connections go to node `node` of `nodes`.
pub fn conns_of(conns: usize, node: usize, nodes: usize) -> usize {
    let n = nodes.max(1);
    conns / n + usize::from(node < conns % n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Config;

    #[test]
    fn round_robin_over_nodes() {
        let got: Vec<(usize, usize)> = (0..7).map(|i| node_of(i, 3)).collect();
        assert_eq!(
            got,
            [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2)]
        );
        assert_eq!(node_of(5, 1), (0, 5), "one node: the index itself");
        let split: Vec<usize> = (0..3).map(|k| conns_of(7, k, 3)).collect();
        assert_eq!(split, [3, 2, 2]);
        assert_eq!((0..2).map(|k| conns_of(20, k, 2)).sum::<usize>(), 20);
        for (conns, n) in [(20, 2), (50_000, 3), (1, 4), (0, 2)] {
            for k in 0..n {
                let counted = (0..conns).filter(|&i| node_of(i, n).0 == k).count();
                assert_eq!(conns_of(conns, k, n), counted, "{conns} over {n}");
            }
        }
    }

    /// Each (source address, node) pair carries `--per-addr` connections at most.
    #[test]
    fn source_addresses_are_counted_per_node() {
        let lo = crate::url::parse_ws("ws://127.0.0.1:1/").unwrap();
        let mut pairs = std::collections::BTreeMap::new();
        for i in 0..12 {
            let (node, rank) = node_of(i, 3);
            let src = crate::sockets::source_addr(&lo, 2, rank).unwrap();
            *pairs.entry((src, node)).or_insert(0) += 1;
        }
        assert!(pairs.values().all(|&n| n == 2), "{pairs:?}");
        assert_eq!(pairs.len(), 6, "127.0.0.1 and .2 toward each of 3 nodes");
    }

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["loadgen"];
        argv.extend_from_slice(args);
        crate::args::parse(argv).map_err(|e| e.line())
    }

    #[test]
    fn urls_repeated_or_listed() {
        let (a, b) = ("ws://127.0.0.1:1/ws/chat/x", "ws://127.0.0.1:2/ws/chat/x");
        let fanout = ["--scenario", "fanout"];
        let repeated = parse(&[&fanout[..], &["--url", a, "--url", b]].concat()).unwrap();
        let listed = parse(&[&fanout[..], &["--url", &format!("{a},{b}")]].concat()).unwrap();
        assert_eq!(repeated, listed);
        let c = listed;
        assert_eq!(c.urls, [a, b]);
        assert_eq!(c.url, format!("{a},{b}"));
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.target, c.targets[0], "the first node is the publisher's");
        assert_eq!(c.targets[1].addr.port(), 2);
        let p = c.publish.as_ref().unwrap();
        assert_eq!((p.addr.port(), p.path.as_str()), (1, "/publish/chat/x"));
        // --publish-url still overrides; a single --url is one node, as before.
        let c = parse(
            &[
                &fanout[..],
                &["--url", a, "--url", b, "--publish-url"],
                &["http://127.0.0.1:2/publish/y"],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(c.publish.unwrap().addr.port(), 2);
        let c = parse(&["--url", a]).unwrap();
        assert_eq!(
            (c.targets.len(), c.urls.as_slice(), c.url.as_str()),
            (1, &[a.to_string()][..], a)
        );
        // Worker processes get every node.
        let c = parse(&["--url", &format!("{a},{b}"), "--conns", "7"]).unwrap();
        let back: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn url_lists_refused_with_one_line() {
        let table: &[(&[&str], &str)] = &[
            (
                &[
                    "--url",
                    "ws://127.0.0.1:1/e,wss://127.0.0.1:2/e",
                    "--insecure",
                ],
                "mixes ws:// and wss://",
            ),
            (
                &[
                    "--url",
                    "ws://127.0.0.1:1/e",
                    "--url",
                    "http://127.0.0.1:2/e",
                ],
                "not a ws://",
            ),
            (
                &["--url", "ws://127.0.0.1:1/e,ws://127.0.0.1:1/e"],
                "same node",
            ),
            (&["--url", "ws://127.0.0.1:1/e,"], "not a ws://"),
            (
                &["--url", "ws://127.0.0.1:1/e,ws://127.0.0.1:x/e"],
                "not a port",
            ),
            // 100,000 over one node at 200 per address would need 500 addresses.
            (
                &[
                    "--url",
                    "ws://127.0.0.1:1/e",
                    "--conns",
                    "100000",
                    "--per-addr",
                    "200",
                ],
                "source addresses",
            ),
        ];
        for (args, want) in table {
            let line = parse(args).unwrap_err();
            assert!(
                line.contains(want) && !line.contains('\n'),
                "{args:?}: {line}"
            );
        }
        // Over two nodes each (source address, node) pair has its own ports: 250 addresses.
        let two = "ws://127.0.0.1:1/e,ws://127.0.0.1:2/e";
        parse(&["--url", two, "--conns", "100000", "--per-addr", "200"]).unwrap();
    }
}
