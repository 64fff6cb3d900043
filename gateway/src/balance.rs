//! STUB
use crate::config::BalancePolicy;
pub struct Balancer;
impl Balancer {
    pub fn new(_p: &BalancePolicy, _w: &[u32], _k: &[&str]) -> Balancer { Balancer }
    pub fn pick(&self, eligible: &dyn Fn(usize) -> bool, _hash: u64) -> Option<Lease> { eligible(0).then_some(Lease(0)) }
}
pub struct Lease(usize);
impl Lease { pub fn index(&self) -> usize { self.0 } }
pub fn hash_key(_b: &[u8]) -> u64 { 0 }
