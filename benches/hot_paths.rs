//! Criterion benches of the CPU hot paths, in orders per second on one core:
//!
//! - `decode_validate`: one record value (JSON bytes) → a validated `Order`, as the consumer does
//!   for every record (target: ≥ 1,000,000 orders/s);
//! - `fold_batch`: a 500-order batch folded into the deltas of both aggregate tables, as the
//!   aggregator does before its MySQL transaction;
//! - `encode`: an order to JSON, as the producer does.
//!
//!   cargo bench --bench hot_paths
//!
//! Criterion reports time per iteration and, with `Throughput::Elements`, orders per second.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use orderstream::model::{decode, Deltas, Order};
use orderstream::tools::OrderGenerator;
use rand::SeedableRng;

/// Orders as the simulated producer makes them, over about a minute of creation times.
fn orders(n: usize) -> Vec<Order> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut generator = OrderGenerator::new(1);
    let start = 1_790_000_000_000i64;
    (0..n)
        .map(|i| generator.next(start + (i as i64) * 60_000 / n as i64, &mut rng))
        .collect()
}

fn decode_validate(c: &mut Criterion) {
    let payloads: Vec<Vec<u8>> = orders(10_000).iter().map(Order::to_json).collect();
    let mut group = c.benchmark_group("decode_validate");
    group.throughput(Throughput::Elements(payloads.len() as u64));
    group.bench_function("10k orders", |b| {
        b.iter(|| {
            for p in &payloads {
                black_box(decode(black_box(p), 64 * 1024).ok());
            }
        })
    });
    group.finish();
}

fn fold_batch(c: &mut Criterion) {
    let batch = orders(500);
    let mut group = c.benchmark_group("fold_batch");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("500 orders", |b| {
        b.iter(|| black_box(Deltas::fold(black_box(&batch))))
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let all = orders(10_000);
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(all.len() as u64));
    group.bench_function("10k orders", |b| {
        b.iter(|| {
            for o in &all {
                black_box(o.to_json());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, decode_validate, fold_batch, encode);
criterion_main!(benches);
