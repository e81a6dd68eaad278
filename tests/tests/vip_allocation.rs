//! VIP allocation against DynamoDB in moto server: real conditional
//! transactions, real concurrency.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::collections::HashSet;
use std::net::Ipv4Addr;

use loopmesh_shared::store::dynamo::DynamoVipLedger;
use loopmesh_shared::vip::{AllocError, ServiceKey, ServiceKind, VipLedger, VipPool, allocate, release};
use loopmesh_tests::{dynamo_client, fresh_table, item_count, sdk_config};

fn pool(cidr: &str) -> VipPool {
    VipPool::new(cidr.parse().unwrap()).unwrap()
}

fn key(name: &str) -> ServiceKey {
    ServiceKey::new("default", ServiceKind::Service, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_services_get_two_hundred_distinct_vips() {
    let table = fresh_table(&dynamo_client().await, "alloc200").await;
    let config = sdk_config().await;
    // A /24 makes identity-hash collisions certain, so the race for addresses is real.
    let p = pool("127.1.0.0/24");
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let ledger = DynamoVipLedger::new(aws_sdk_dynamodb::Client::new(&config), table.clone());
            tokio::spawn(async move { allocate(&ledger, &p, &key(&format!("svc-{i}")), 1_000).await.map(|a| a.vip) })
        })
        .collect();
    let mut vips = HashSet::new();
    for t in tasks {
        let vip = t.await.unwrap().unwrap();
        assert!(p.contains(vip));
        vips.insert(vip);
    }
    assert_eq!(vips.len(), 200);
    // Each service item and each lease exactly once, and the DNS state:
    // nothing doubled, nothing stray.
    assert_eq!(item_count(&dynamo_client().await, &table).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_identity_allocated_concurrently_gets_one_vip() {
    let table = fresh_table(&dynamo_client().await, "allocsame").await;
    let config = sdk_config().await;
    let p = pool("127.1.0.0/16");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let ledger = DynamoVipLedger::new(aws_sdk_dynamodb::Client::new(&config), table.clone());
            tokio::spawn(async move { allocate(&ledger, &p, &key("redis"), 1_000).await.map(|a| a.vip) })
        })
        .collect();
    let mut vips = HashSet::new();
    for t in tasks {
        vips.insert(t.await.unwrap().unwrap());
    }
    assert_eq!(vips.len(), 1, "{vips:?}");
    // The service, its lease and the DNS state.
    assert_eq!(item_count(&dynamo_client().await, &table).await, 3);
}

#[tokio::test]
async fn a_slash_29_exhausts_with_a_clear_error_and_no_stray_items() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "alloc29").await;
    let ledger = DynamoVipLedger::new(client.clone(), table.clone());
    let p = pool("127.1.0.0/29");
    let mut vips = HashSet::new();
    for i in 0..6 {
        vips.insert(allocate(&ledger, &p, &key(&format!("s{i}")), 0).await.unwrap().vip);
    }
    assert_eq!(vips.len(), 6);
    assert!(!vips.contains(&Ipv4Addr::new(127, 1, 0, 0)) && !vips.contains(&Ipv4Addr::new(127, 1, 0, 7)));
    let before = item_count(&client, &table).await;
    let err = allocate(&ledger, &p, &key("seventh"), 0).await.unwrap_err();
    assert!(matches!(err, AllocError::PoolExhausted { .. }));
    assert_eq!(
        err.to_string(),
        "pool 127.1.0.0/29 for service VIPs in mesh \"default\" is exhausted: every address is held or in quarantine"
    );
    assert!(!err.is_retryable());
    assert_eq!(item_count(&client, &table).await, before);
}

#[tokio::test]
async fn quarantine_blocks_reuse_until_it_ends() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "quarantine").await;
    let ledger = DynamoVipLedger::new(client, table);
    let p = pool("127.1.0.0/30");
    let a = allocate(&ledger, &p, &key("a"), 0).await.unwrap().vip;
    let _b = allocate(&ledger, &p, &key("b"), 0).await.unwrap().vip;
    assert!(release(&ledger, &key("a"), 1_130).await.unwrap());
    assert!(!release(&ledger, &key("a"), 1_130).await.unwrap(), "a second release is a no-op");
    assert!(matches!(allocate(&ledger, &p, &key("c"), 1_129).await, Err(AllocError::PoolExhausted { .. })));
    assert_eq!(allocate(&ledger, &p, &key("c"), 1_130).await.unwrap().vip, a);
}

#[tokio::test]
async fn a_returning_service_regains_its_vip() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "return").await;
    let ledger = DynamoVipLedger::new(client, table);
    let p = pool("127.1.0.0/16");
    let vip = allocate(&ledger, &p, &key("redis"), 0).await.unwrap().vip;
    assert!(release(&ledger, &key("redis"), 500).await.unwrap());
    let assignment = ledger.assignment(&key("redis")).await.unwrap();
    assert_eq!((assignment.current, assignment.previous), (None, Some(vip)));
    // Inside its own quarantine, and after it: the same address.
    assert_eq!(allocate(&ledger, &p, &key("redis"), 100).await.unwrap().vip, vip);
    release(&ledger, &key("redis"), 600).await.unwrap();
    assert_eq!(allocate(&ledger, &p, &key("redis"), 10_000).await.unwrap().vip, vip);
}

#[tokio::test]
async fn stored_vips_outside_a_changed_cidr_keep_working() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "cidr").await;
    let ledger = DynamoVipLedger::new(client, table);
    let old = allocate(&ledger, &pool("127.1.0.0/16"), &key("redis"), 0).await.unwrap().vip;
    let new = pool("127.5.0.0/16");
    assert_eq!(allocate(&ledger, &new, &key("redis"), 0).await.unwrap().vip, old);
    assert!(new.contains(allocate(&ledger, &new, &key("web"), 0).await.unwrap().vip));
}

/// A task-events run that claims a VIP and dies before its registration
/// must not leave the name unpublished for good: the claim itself records
/// the mesh in the DNS state and moves its generation (found by the chaos
/// test: the next run finds the VIP assigned and changes no DNS state).
#[tokio::test]
async fn claiming_a_vip_tells_dns_sync_in_the_same_transaction() {
    use loopmesh_shared::dns::sync::DnsStore;
    let client = dynamo_client().await;
    let table = fresh_table(&client, "vip-dns").await;
    let ledger = DynamoVipLedger::new(client.clone(), &table);
    let store = loopmesh_shared::store::dynamo::DynamoDnsStore::new(client, &table);
    let before = store.state().await.unwrap();
    allocate(&ledger, &pool("127.1.0.0/16"), &key("orders"), 1_800_000_000).await.unwrap();
    let after = store.state().await.unwrap();
    assert!(after.meshes.contains(&key("orders").mesh), "{:?}", after.meshes);
    assert!(after.generation > before.generation, "dns-sync is told: {} -> {}", before.generation, after.generation);
}
