//! Computes the n-th prime (n from the first argument, default 1000) with a sieve on the heap,
//! returns it through the `result` host function and exits with `prime % 256`.
#![no_std]
#![no_main]
extern crate alloc;
use alloc::vec;

zone_guest::entry!(main);

fn parse(arg: &[u8]) -> usize {
    arg.iter().fold(0, |n, d| n * 10 + usize::from(d - b'0'))
}

fn main() -> i32 {
    let n = zone_guest::args().next().map_or(1000, parse);
    let limit = 200_000;
    let mut composite = vec![false; limit];
    let mut found = 0;
    let mut prime = 0;
    for i in 2..limit {
        if composite[i] {
            continue;
        }
        found += 1;
        prime = i;
        if found == n {
            break;
        }
        let mut j = i * i;
        while j < limit {
            composite[j] = true;
            j += i;
        }
    }
    zone_guest::call_u64("result", &[prime as u64]).expect("result host function");
    (prime % 256) as i32
}
