//! DynamoDB requests per VIP allocation at 0 %, 50 % and 90 % pool fill,
//! counted at the HTTP layer against moto server (run through `bench/run`).

use loopmesh_shared::store::dynamo::DynamoVipLedger;
use loopmesh_shared::vip::{ServiceKey, ServiceKind, VipPool, allocate};
use loopmesh_tests::{CallCounter, counted_dynamo_client, fresh_table};

/// New services allocated and measured at each fill level.
const SAMPLES: usize = 40;

#[tokio::main]
async fn main() {
    let pool = VipPool::new("127.1.0.0/22".parse().expect("literal CIDR")).expect("a /22 is a valid pool");
    let counter = CallCounter::default();
    let client = counted_dynamo_client(&counter).await;
    let table = fresh_table(&client, "bench-vip").await;
    let ledger = DynamoVipLedger::new(client, table);
    let size = pool.size() as usize;
    let mut allocated = 0usize;
    let key = |i: usize| ServiceKey::new("default", ServiceKind::Service, format!("svc-{i}"));

    println!("VIP allocation, pool {} ({size} usable addresses), {SAMPLES} new services per row", pool.net());
    println!("{:>6} {:>14} {:>10} {:>12} {:>8}", "fill", "requests/alloc", "max", "BatchGetItem", "Transact");
    for fill in [0usize, 50, 90] {
        let target = size * fill / 100;
        while allocated < target {
            allocate(&ledger, &pool, &key(allocated), 0).await.expect("fill the pool");
            allocated += 1;
        }
        counter.reset();
        let mut max = 0;
        for _ in 0..SAMPLES {
            let before = counter.total();
            allocate(&ledger, &pool, &key(allocated), 0).await.expect("allocate");
            allocated += 1;
            max = max.max(counter.total() - before);
        }
        let per = counter.total() as f64 / SAMPLES as f64;
        println!(
            "{:>5}% {:>14.2} {:>10} {:>12.2} {:>8.2}",
            fill,
            per,
            max,
            counter.get("BatchGetItem") as f64 / SAMPLES as f64,
            counter.get("TransactWriteItems") as f64 / SAMPLES as f64
        );
    }
    // An allocation for a service that already has its VIP: one GetItem.
    counter.reset();
    allocate(&ledger, &pool, &key(0), 0).await.expect("existing");
    println!("existing service: {} request(s)", counter.total());
}
