//! The test topologies themselves (tests/common/topology.rs): a Cluster and a Sentinel
//! set start, agree, and fail over when a primary is killed.

mod common;

use std::time::Instant;

use common::topology::{topic_slot, ClusterOptions, RedisCluster, SentinelOptions, SentinelSet};

#[test]
fn cluster_spreads_topics_and_fails_over() {
    let started = Instant::now();
    let mut cluster = RedisCluster::start_with(ClusterOptions::fast_failover());
    println!("cluster of 6 nodes ready in {:?}", started.elapsed());
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "three primaries");
    let shards = cluster.topics_on_every_shard("room", 2);
    for (shard, topics) in primaries.iter().zip(&shards) {
        for topic in topics {
            assert_eq!(cluster.primary_for_topic(topic), *shard);
        }
    }
    let topic = &shards[0][0];
    let slot = topic_slot(topic);
    // The node's own answer agrees with the computed slot.
    let answer = cluster.nodes[primaries[0]].cli(&["CLUSTER", "KEYSLOT", &format!("sh:{{{topic}}}:s")]);
    assert_eq!(String::from_utf8_lossy(&answer.stdout).trim(), slot.to_string());
    let old = primaries[0];
    let replica = cluster.replica_of(old);
    let killed = Instant::now();
    cluster.kill(old);
    let new = cluster.wait_failover(slot, old);
    println!("failover in {:?}", killed.elapsed());
    assert_eq!(new, replica, "the replica of the dead primary took over");
    cluster.restart(old);
    cluster.wait_healthy();
    assert_eq!(cluster.primary_for_topic(topic), new, "the restarted node rejoined as a replica");
}

#[test]
fn sentinel_fails_over() {
    let started = Instant::now();
    let mut set = SentinelSet::start_with(SentinelOptions::fast_failover());
    println!("sentinel set ready in {:?}", started.elapsed());
    let old = set.primary();
    assert_eq!(old, 0);
    let killed = Instant::now();
    set.kill(old);
    let new = set.wait_failover(old);
    println!("failover in {:?}", killed.elapsed());
    assert_ne!(new, old);
}
