//! The `#[cube]` kernels of prototype 5, written as a CubeCL user would: GEMM on the 8x8 matrix path
//! (`cmma`, which cubecl-cpp lowers to `simdgroup_matrix` on Metal), a row softmax on plane (SIMD-group)
//! reductions, and attention forward for one head, one query row per cube.
use cubecl::prelude::*;

/// Edge of the C tile one cube computes; 4 planes, one 8x8 fragment each.
pub const GEMM_TILE: u32 = 16;

/// C [m, n] = A [m, k] B [k, n], F in, f32 accumulate. Cube (32, 4): plane p owns fragment (p / 2, p % 2)
/// of the 16x16 tile; per step of 8 along k the cube stages A [16][8] and B [8][16] in shared memory
/// (zeros outside the matrices, so any m, n, k works) and each plane runs one MMA.
#[cube(launch)]
pub fn gemm<F: Float>(a: &[F], b: &[F], c: &mut [f32], m: u32, n: u32, k: u32, #[define(F)] _dtype: ElemType) {
    let mut a_tile = Shared::<[F]>::new_slice(128usize);
    let mut b_tile = Shared::<[F]>::new_slice(128usize);
    let mut c_tile = Shared::<[f32]>::new_slice(256usize);
    let row0 = CUBE_POS_Y * GEMM_TILE;
    let col0 = CUBE_POS_X * GEMM_TILE;
    let t = UNIT_POS_Y * 32 + UNIT_POS_X;
    let plane = UNIT_POS_Y;
    let frag_row = (plane / 2) * 8;
    let frag_col = (plane % 2) * 8;
    let acc = cmma::Matrix::<f32>::from_value(
        cmma::MatrixIdent::Accumulator,
        8usize,
        8usize,
        8usize,
        cmma::MatrixLayout::Undefined,
        0.0,
    );
    let mut fa = cmma::Matrix::<F>::from_value(
        cmma::MatrixIdent::A,
        8usize,
        8usize,
        8usize,
        cmma::MatrixLayout::RowMajor,
        F::new(0.0),
    );
    let mut fb = cmma::Matrix::<F>::from_value(
        cmma::MatrixIdent::B,
        8usize,
        8usize,
        8usize,
        cmma::MatrixLayout::RowMajor,
        F::new(0.0),
    );
    let mut k0 = 0u32;
    while k0 < k {
        // thread t stages A[t / 8][t % 8] and B[t / 16][t % 16]
        let ar = row0 + t / 8;
        let ak = k0 + t % 8;
        a_tile[t as usize] = if ar < m && ak < k { a[(ar * k + ak) as usize] } else { F::new(0.0) };
        let bk = k0 + t / 16;
        let bc = col0 + t % 16;
        b_tile[t as usize] = if bk < k && bc < n { b[(bk * n + bc) as usize] } else { F::new(0.0) };
        sync_cube();
        cmma::load(&mut fa, &a_tile[(frag_row * 8) as usize..(frag_row * 8 + 64) as usize], 8);
        cmma::load(&mut fb, &b_tile[frag_col as usize..(frag_col + 120) as usize], 16);
        cmma::execute(&fa, &fb, &acc, &acc);
        sync_cube();
        k0 += 8;
    }
    let start = frag_row * 16 + frag_col;
    cmma::store(&mut c_tile[start as usize..(start + 120) as usize], &acc, 16, cmma::MatrixLayout::RowMajor);
    sync_cube();
    for e in 0..2u32 {
        let idx = t * 2 + e;
        let r = row0 + idx / 16;
        let col = col0 + idx % 16;
        if r < m && col < n {
            c[(r * n + col) as usize] = c_tile[idx as usize];
        }
    }
}

/// Threads per softmax cube: 8 planes.
pub const SOFTMAX_THREADS: u32 = 256;

/// Y = softmax(X) along rows of `cols` elements; one cube of 256 units per row, the max and the sum
/// reduced within planes, then across the 8 planes through shared memory.
#[cube(launch)]
pub fn softmax(x: &[f32], y: &mut [f32], cols: u32) {
    let mut partial = Shared::<[f32]>::new_slice(8usize);
    let base = CUBE_POS_X * cols;
    let mut mx = f32::new(-1.0e30);
    let mut c = UNIT_POS_X;
    while c < cols {
        mx = f32::max(mx, x[(base + c) as usize]);
        c += SOFTMAX_THREADS;
    }
    mx = plane_max(mx);
    if UNIT_POS_PLANE == 0 {
        partial[(UNIT_POS_X / 32) as usize] = mx;
    }
    sync_cube();
    let mut row_max = partial[0];
    for w in 1..8u32 {
        row_max = f32::max(row_max, partial[w as usize]);
    }
    sync_cube();
    let mut sum = f32::new(0.0);
    c = UNIT_POS_X;
    while c < cols {
        sum += f32::exp(x[(base + c) as usize] - row_max);
        c += SOFTMAX_THREADS;
    }
    sum = plane_sum(sum);
    if UNIT_POS_PLANE == 0 {
        partial[(UNIT_POS_X / 32) as usize] = sum;
    }
    sync_cube();
    let mut total = f32::new(0.0);
    for w in 0..8u32 {
        total += partial[w as usize];
    }
    c = UNIT_POS_X;
    while c < cols {
        y[(base + c) as usize] = f32::exp(x[(base + c) as usize] - row_max) / total;
        c += SOFTMAX_THREADS;
    }
}

/// O = softmax(Q K^T / sqrt(d)) V for one head, Q, K, V, O [n, d]. One plane (32 units) per query row:
/// the scores of all n keys live in shared memory (n <= `max_keys`), reduced with plane_max / plane_sum.
#[cube(launch)]
pub fn attention(q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], n: u32, d: u32, #[comptime] max_keys: usize) {
    let mut p = Shared::<[f32]>::new_slice(max_keys);
    let row = CUBE_POS_X;
    let scale = f32::new(1.0) / f32::sqrt(f32::cast_from(d));
    let mut mx = f32::new(-1.0e30);
    let mut j = UNIT_POS_X;
    while j < n {
        let mut s = f32::new(0.0);
        for i in 0..d {
            s += q[(row * d + i) as usize] * k[(j * d + i) as usize];
        }
        p[j as usize] = s * scale;
        mx = f32::max(mx, s * scale);
        j += 32;
    }
    mx = plane_max(mx);
    let mut sum = f32::new(0.0);
    j = UNIT_POS_X;
    while j < n {
        let e = f32::exp(p[j as usize] - mx);
        p[j as usize] = e;
        sum += e;
        j += 32;
    }
    sum = plane_sum(sum);
    sync_cube();
    let mut col = UNIT_POS_X;
    while col < d {
        let mut acc = f32::new(0.0);
        for jj in 0..n {
            acc += p[jj as usize] * v[(jj * d + col) as usize];
        }
        o[(row * d + col) as usize] = acc / sum;
        col += 32;
    }
}
