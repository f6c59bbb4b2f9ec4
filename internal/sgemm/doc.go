// Package sgemm is a float32 matrix multiply (BLAS sgemm, row-major) for
// amd64 with AVX2 and FMA, and with AVX-512 where the CPU has it, written
// in Go assembly so the binary stays static and cgo-free. On other CPUs
// and architectures, or when the environment variable STAGECOACH_GEMM=go
// is set, it falls back to gonum's pure-Go Sgemm; STAGECOACH_GEMM=avx2
// keeps to the AVX2 kernel.
//
// The structure is the Goto/BLIS one. C = alpha·op(A)·op(B) + beta·C is
// computed in blocks: the columns of C in slabs of NC, the inner dimension
// k in slabs of KC, the rows of C in blocks of MC. For each (NC, KC) slab
// the KC×NC part of op(B) is packed into contiguous micro-panels of NR=16
// columns (one panel stays in L1 while it is used), and each MC×KC block
// of op(A) into micro-panels of MR=6 rows (the block stays in L2). A
// register-blocked micro-kernel then keeps a 6×16 tile of C in twelve YMM
// accumulators and walks the KC panel with one broadcast and two FMAs per
// row, adding the finished tile into C. With AVX-512 a second kernel
// takes two neighbouring B micro-panels at once, a 6×32 tile in twelve ZMM
// accumulators, one broadcast and two FMAs per row as before; each element
// gets the same multiply-adds in the same order, so the two kernels give
// the same bits. Packing takes care of the
// transposes and pads the edges with zeros, so the kernel sees only one
// layout; tiles at the right and bottom edges go through a small scratch
// tile.
//
// Exactness: every element of C is computed the same way whatever the
// thread count. The blocking depends only on the shape; along k each
// element sums its products in ascending order inside a KC slab and adds
// the slabs into C in ascending order. Threads only divide the tiles of a
// slab among themselves (a fixed split of a fixed tile list) and never share
// an element, so one thread and any number of threads give bit-identical
// results.
package sgemm
