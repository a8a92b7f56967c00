//! Several nodes in one run (`--url` given more than once, or as a list): which node each
//! connection goes to and from which source address, what each node's clients measured
//! ([`NodeResults`], merged across threads and processes like `stats::Results`), and each
//! node's figures in the report ([`NodeReport`]), its losses counted by the same
//! `payload::account` as the totals.
//!
//! With one node nothing here is recorded: `Results::nodes` stays empty and the report has no
//! per-node rows, so a single `--url` run costs and prints exactly what it did before.

use serde::{Deserialize, Serialize};

use crate::args::Config;
use crate::payload;
use crate::stats::{self, Hist, Percentiles};

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

/// What the clients of one node measured (one thread's, or merged).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeResults {
    /// Connections that completed the WebSocket handshake.
    pub connected: u64,
    /// Fanout, flood: subscribers open when publishing started.
    pub subscribers: u64,
    /// Messages received and parsed.
    pub deliveries: u64,
    /// A sequence number received twice by one subscriber.
    pub duplicates: u64,
    /// A sequence number received for the first time after a higher one.
    pub out_of_order: u64,
    pub handshake: Hist,
    /// Delivery latency from the intended send time.
    pub delivery: Hist,
    /// First-time deliveries per sequence number, summed over this node's subscribers.
    #[serde(with = "stats::rle")]
    pub per_seq: Vec<u32>,
    /// Where each of this node's subscribers that ended early had got to (see `Results`).
    pub cut_off: Vec<u64>,
}

impl NodeResults {
    pub fn merge(&mut self, o: &NodeResults) {
        self.connected += o.connected;
        self.subscribers += o.subscribers;
        self.deliveries += o.deliveries;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.handshake.merge(&o.handshake);
        self.delivery.merge(&o.delivery);
        stats::add_per_seq(&mut self.per_seq, &o.per_seq);
        self.cut_off.extend_from_slice(&o.cut_off);
    }
}

/// Merges per-node results index by index (a side with fewer nodes has recorded none).
pub fn merge_all(into: &mut Vec<NodeResults>, from: &[NodeResults]) {
    if into.len() < from.len() {
        into.resize(from.len(), NodeResults::default());
    }
    for (a, b) in into.iter_mut().zip(from) {
        a.merge(b);
    }
}

/// One node's figures in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeReport {
    pub url: String,
    /// Connections sent to this node.
    pub conns: u64,
    pub connected: u64,
    pub handshake: Percentiles,
    pub subscribers: u64,
    pub deliveries: u64,
    /// Deliveries expected: each accepted message times this node's subscribers (less those
    /// cut off before it).
    pub expected: u64,
    /// First-time deliveries of accepted messages.
    pub delivered: u64,
    /// Accepted messages a subscriber of this node never got (still missing at the end).
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Delivery latency from the intended send time.
    pub latency: Percentiles,
}

/// Each node's figures, in `--url` order; empty for a run against one node. `accepted` is
/// the publisher's verdict per sequence number (empty when nothing was published).
pub fn reports(cfg: &Config, nodes: &[NodeResults], accepted: &[bool]) -> Vec<NodeReport> {
    let n = cfg.urls.len();
    if n <= 1 {
        return Vec::new();
    }
    let none = NodeResults::default();
    (0..n)
        .map(|k| {
            let r = nodes.get(k).unwrap_or(&none);
            let a = payload::account(&r.per_seq, accepted, r.subscribers, &r.cut_off);
            NodeReport {
                url: cfg.urls[k].clone(),
                conns: conns_of(cfg.conns, k, n) as u64,
                connected: r.connected,
                handshake: r.handshake.percentiles(),
                subscribers: r.subscribers,
                deliveries: r.deliveries,
                expected: a.expected,
                delivered: a.delivered,
                lost: a.lost,
                duplicates: r.duplicates,
                out_of_order: r.out_of_order,
                latency: r.delivery.percentiles(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn help_says_how_to_run_across_nodes() {
        let help = crate::args::parse(["loadgen", "--help"])
            .unwrap_err()
            .info()
            .unwrap();
        assert!(
            help.contains("Across nodes") && help.contains("URL i mod N"),
            "{help}"
        );
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

    /// Two nodes, 4 accepted messages of 5 (seq 2 refused). Node 0's two subscribers got
    /// everything; node 1's two got nothing but seq 0 once, then seq 0 again (a duplicate),
    /// and one of them got seq 3 before seq 1 (out of order, not lost).
    #[test]
    fn per_node_loss_duplicates_and_order() {
        let cfg = crate::args::parse([
            "loadgen",
            "--scenario",
            "fanout",
            "--conns",
            "4",
            "--url",
            "ws://127.0.0.1:1/ws/chat/a,ws://127.0.0.1:2/ws/chat/a",
        ])
        .unwrap();
        let accepted = [true, true, false, true, true];
        let mut a = NodeResults {
            connected: 2,
            subscribers: 2,
            deliveries: 8,
            per_seq: vec![2, 2, 0, 2, 2],
            ..NodeResults::default()
        };
        a.delivery.record(1_000_000);
        let b = NodeResults {
            connected: 2,
            subscribers: 2,
            deliveries: 5,
            duplicates: 1,
            out_of_order: 1,
            per_seq: vec![2, 1, 0, 1],
            ..NodeResults::default()
        };
        // Merged as threads' results are: one thread saw node 0 only, the other node 1 only.
        let (mut left, right) = (vec![a], vec![NodeResults::default(), b]);
        merge_all(&mut left, &right);
        assert_eq!(left.len(), 2);
        let rep = reports(&cfg, &left, &accepted);
        assert_eq!(rep.len(), 2);
        assert_eq!((rep[0].conns, rep[1].conns), (2, 2));
        assert_eq!((rep[0].expected, rep[0].delivered, rep[0].lost), (8, 8, 0));
        assert_eq!((rep[1].expected, rep[1].delivered, rep[1].lost), (8, 4, 4));
        assert_eq!((rep[1].duplicates, rep[1].out_of_order), (1, 1));
        assert_eq!(rep[0].latency.count, 1);
        assert_eq!(rep[1].url, "ws://127.0.0.1:2/ws/chat/a");
        // One node: no per-node figures at all.
        let one = crate::args::parse(["loadgen", "--scenario", "fanout"]).unwrap();
        assert!(reports(&one, &left, &accepted).is_empty());
    }
}
