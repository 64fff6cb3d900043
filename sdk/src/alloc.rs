//! The plugins' memory allocator: free lists by size class in front of the standard one.
//!
//! A hook call allocates a few dozen small blocks (the request's buffers, the recorded changes,
//! the result) and frees them all when it returns; with the standard allocator (dlmalloc) that
//! was about a tenth of a hook's cost. Here a block of up to 1 KiB is taken from, and given back
//! to, a free list of its size class (16, 32, ... 1024 bytes): a pointer pop or push. Freed
//! small blocks are kept for reuse rather than returned, which suits an instance that serves the
//! same kind of request over and over; larger blocks go to the standard allocator. A Wasm guest
//! runs one thread, so the lists need no lock.
//!
//! It is the global allocator of every plugin built for wasm32 with the SDK's default `allocator`
//! feature; a plugin with an allocator of its own turns the feature off.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Size classes: 16 << 0 ..= 16 << 6 (1 KiB).
const CLASSES: usize = 7;
/// The alignment every class block gets (and the most a class request may ask for).
const ALIGN: usize = 16;

/// The allocator: one free list per size class, each a chain through the free blocks' first word.
pub struct SizeClasses {
    free: UnsafeCell<[*mut u8; CLASSES]>,
}

// SAFETY: a wasm32 guest has one thread; the SDK installs this allocator only there.
unsafe impl Sync for SizeClasses {}

impl SizeClasses {
    /// Empty free lists.
    pub const fn new() -> Self {
        SizeClasses { free: UnsafeCell::new([ptr::null_mut(); CLASSES]) }
    }
}

impl Default for SizeClasses {
    fn default() -> Self {
        Self::new()
    }
}

/// The size class of `layout`, if it is small enough for one.
fn class(layout: Layout) -> Option<usize> {
    if layout.size() > 16 << (CLASSES - 1) || layout.align() > ALIGN {
        return None;
    }
    Some(layout.size().max(16).next_power_of_two().trailing_zeros() as usize - 4)
}

unsafe impl GlobalAlloc for SizeClasses {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(layout) else {
            // SAFETY: the caller's layout, passed on.
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: single-threaded (see `Sync`); no other borrow of the lists is alive.
        let free = unsafe { &mut *self.free.get() };
        let head = free[c];
        if head.is_null() {
            // SAFETY: a non-zero size and a power-of-two alignment.
            return unsafe { System.alloc(Layout::from_size_align_unchecked(16 << c, ALIGN)) };
        }
        // SAFETY: a free block of this class holds the next free block's address in its first word.
        free[c] = unsafe { head.cast::<*mut u8>().read() };
        head
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(c) = class(layout) else {
            // SAFETY: the caller's block and layout, passed on.
            return unsafe { System.dealloc(block, layout) };
        };
        // SAFETY: single-threaded; the block is at least 16 bytes, 16-aligned, and now unused.
        unsafe {
            let free = &mut *self.free.get();
            block.cast::<*mut u8>().write(free[c]);
            free[c] = block;
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to the alignment, does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new_layout)) {
            (Some(old), Some(new)) if old == new => block,
            // SAFETY: both large: the standard allocator's own block.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            _ => {
                // SAFETY: a fresh block of the new layout, then the old one's bytes and release.
                unsafe {
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_reused_by_class_and_large_ones_pass_through() {
        let a = SizeClasses::new();
        let small = Layout::from_size_align(24, 8).unwrap();
        unsafe {
            let first = a.alloc(small);
            assert_eq!(first as usize % ALIGN, 0);
            first.write_bytes(7, 24);
            a.dealloc(first, small);
            let again = a.alloc(Layout::from_size_align(32, 16).unwrap());
            assert_eq!(again, first, "a 32-byte request reuses the freed 24-byte (class 32) block");
            let grown = a.realloc(again, Layout::from_size_align(32, 16).unwrap(), 100);
            assert_ne!(grown, again, "a bigger class moves");
            let big = Layout::from_size_align(4096, 8).unwrap();
            let large = a.alloc(big);
            large.write_bytes(1, 4096);
            let larger = a.realloc(large, big, 8192);
            assert_eq!(larger.read(), 1);
            a.dealloc(larger, Layout::from_size_align(8192, 8).unwrap());
            a.dealloc(grown, Layout::from_size_align(100, 16).unwrap());
        }
        assert_eq!(class(Layout::from_size_align(1, 1).unwrap()), Some(0));
        assert_eq!(class(Layout::from_size_align(1024, 16).unwrap()), Some(6));
        assert_eq!(class(Layout::from_size_align(1025, 16).unwrap()), None);
        assert_eq!(class(Layout::from_size_align(64, 32).unwrap()), None);
    }
}
