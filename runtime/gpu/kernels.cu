// aspects-rt preprocessing kernels, compiled at first use with NVRTC (runtime/gpu/kernels.py).
//
// Each kernel reproduces one CPU function, named in its comment, so the GPU path and the
// CPU path give the same image, mask, labels and patches; tests/test_gpu_kernels.py checks
// that. Volumes are C-order (z, y, x). Every loop is a grid-stride loop and nothing depends
// on the block size, so the same source also runs as plain C++ (one thread) in the tests.
// No #include: NVRTC compiles this without an include path. The label ids and classes come
// from the #define block runtime.gpu.kernels.source() puts in front.

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned char u8;

#define GRID_STRIDE(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (i64)(n); i += (i64)blockDim.x * gridDim.x)

// ------------------------------------------------------------------ resample (runtime.resample.resample)

// SimpleITK linear interpolation: outside [-0.5, n - 0.5] is `fill`; inside, neighbours clamp.
__device__ inline float sample_linear(const float* __restrict__ v, int nx, int ny, int nz,
                                      double ci, double cj, double ck, float fill) {
    if (ci < -0.5 || cj < -0.5 || ck < -0.5 || ci > nx - 0.5 || cj > ny - 0.5 || ck > nz - 0.5) return fill;
    double fi = floor(ci), fj = floor(cj), fk = floor(ck);
    double di = ci - fi, dj = cj - fj, dk = ck - fk;
    int i0 = (int)fi, j0 = (int)fj, k0 = (int)fk;
    if (i0 < 0) { i0 = 0; di = 0.0; }
    if (j0 < 0) { j0 = 0; dj = 0.0; }
    if (k0 < 0) { k0 = 0; dk = 0.0; }
    int i1 = i0 + 1 < nx ? i0 + 1 : nx - 1;
    int j1 = j0 + 1 < ny ? j0 + 1 : ny - 1;
    int k1 = k0 + 1 < nz ? k0 + 1 : nz - 1;
    const i64 sy = nx, sz = (i64)nx * ny;
    double c00 = v[k0 * sz + j0 * sy + i0] * (1 - di) + v[k0 * sz + j0 * sy + i1] * di;
    double c01 = v[k0 * sz + j1 * sy + i0] * (1 - di) + v[k0 * sz + j1 * sy + i1] * di;
    double c10 = v[k1 * sz + j0 * sy + i0] * (1 - di) + v[k1 * sz + j0 * sy + i1] * di;
    double c11 = v[k1 * sz + j1 * sy + i0] * (1 - di) + v[k1 * sz + j1 * sy + i1] * di;
    double c0 = c00 * (1 - dj) + c01 * dj, c1 = c10 * (1 - dj) + c11 * dj;
    return (float)(c0 * (1 - dk) + c1 * dk);
}

// HU on the model grid. m (3x4, row-major): output (x, y, sub-slice) index -> study (i, j, k) index.
// Each output slice is the mean of `slab` sub-slices (thin series become thick slabs).
extern "C" __global__ void resample_slab(const float* __restrict__ src, int snx, int sny, int snz,
                                         const double* __restrict__ m, float fill, int slab,
                                         float* __restrict__ out, int nx, int ny, int nz) {
    GRID_STRIDE(idx, (i64)nx * ny * nz) {
        int x = (int)(idx % nx), y = (int)((idx / nx) % ny), z = (int)(idx / ((i64)nx * ny));
        float acc = 0.0f;
        for (int s = 0; s < slab; ++s) {
            double zs = (double)z * slab + s;
            double ci = m[0] * x + m[1] * y + m[2] * zs + m[3];
            double cj = m[4] * x + m[5] * y + m[6] * zs + m[7];
            double ck = m[8] * x + m[9] * y + m[10] * zs + m[11];
            acc += sample_linear(src, snx, sny, snz, ci, cj, ck, fill);
        }
        out[idx] = slab > 1 ? acc / slab : acc;
    }
}

// ------------------------------------------------------------------ pooling (segment._downsample, crops)

// out[z, y, x] = mean of the f x f in-plane block at (z0 + z, (y0 + y) f, (x0 + x) f), or `fill`
// beyond the valid extent (vz, vy, vx): the coarse input, the fine crop and the strip's half grid.
extern "C" __global__ void pool_mean(const float* __restrict__ src, int nz, int ny, int nx, int f,
                                     int z0, int y0, int x0, int vz, int vy, int vx, float fill,
                                     float* __restrict__ out, int oz, int oy, int ox) {
    GRID_STRIDE(idx, (i64)oz * oy * ox) {
        int x = (int)(idx % ox), y = (int)((idx / ox) % oy), z = (int)(idx / ((i64)ox * oy));
        if (z >= vz || y >= vy || x >= vx) { out[idx] = fill; continue; }
        const float* base = src + ((i64)(z0 + z) * ny + (i64)(y0 + y) * f) * nx + (i64)(x0 + x) * f;
        float acc = 0.0f;
        for (int a = 0; a < f; ++a)
            for (int b = 0; b < f; ++b) acc += base[(i64)a * nx + b];
        out[idx] = acc / (f * f);
    }
}

// ------------------------------------------------------------------ skull strip (runtime.strip.brain_mask)

extern "C" __global__ void threshold_above(const float* __restrict__ v, i64 n, float t, u8* __restrict__ out) {
    GRID_STRIDE(i, n) out[i] = v[i] > t;
}

// Iterated in-plane cross dilation/erosion, r times == one diamond of radius r (|dx| + |dy| <= r).
// Outside the slice counts as 0 (scipy's border_value=0), so erosion eats the slice edge.
extern "C" __global__ void morph_diamond(const u8* __restrict__ src, int nz, int ny, int nx, int r, int erode,
                                         u8* __restrict__ out) {
    GRID_STRIDE(idx, (i64)nz * ny * nx) {
        int x = (int)(idx % nx), y = (int)((idx / nx) % ny);
        const u8* slice = src + (idx - (i64)y * nx - x);
        u8 hit = erode ? 1 : 0;
        for (int dy = -r; dy <= r && hit == (erode ? 1 : 0); ++dy) {
            int span = r - (dy < 0 ? -dy : dy);
            for (int dx = -span; dx <= span; ++dx) {
                int yy = y + dy, xx = x + dx;
                u8 v = (yy >= 0 && yy < ny && xx >= 0 && xx < nx) ? slice[(i64)yy * nx + xx] : 0;
                if (erode && !v) { hit = 0; break; }
                if (!erode && v) { hit = 1; break; }
            }
        }
        out[idx] = hit;
    }
}

// Brain-candidate soft tissue: -15 < HU < 100, not near bone, inside the head.
extern "C" __global__ void soft_tissue(const float* __restrict__ v, const u8* __restrict__ bone_near,
                                       const u8* __restrict__ head, i64 n, float lo, float hi,
                                       u8* __restrict__ out) {
    GRID_STRIDE(i, n) out[i] = v[i] > lo && v[i] < hi && !bone_near[i] && head[i];
}

extern "C" __global__ void mask_and(const u8* __restrict__ a, const u8* __restrict__ b, i64 n, u8* __restrict__ out) {
    GRID_STRIDE(i, n) out[i] = a[i] && b[i];
}

// Per-slice hole filling (scipy binary_fill_holes, 4-connected background), in place.
// One block per slice: background reachable from the slice border is marked 2 by row and
// column sweeps until nothing changes; what is not marked is inside.
extern "C" __global__ void fill_holes_slices(u8* __restrict__ mask, int nz, int ny, int nx) {
    __shared__ int changed;
    for (int z = blockIdx.x; z < nz; z += gridDim.x) {
        u8* s = mask + (i64)z * ny * nx;
        for (int i = threadIdx.x; i < ny * nx; i += blockDim.x) {
            int y = i / nx, x = i % nx;
            if (!s[i] && (y == 0 || x == 0 || y == ny - 1 || x == nx - 1)) s[i] = 2;
        }
        __syncthreads();
        do {
            __syncthreads();
            if (threadIdx.x == 0) changed = 0;
            __syncthreads();
            int local = 0;
            for (int y = threadIdx.x; y < ny; y += blockDim.x) {          // rows, both directions
                u8* row = s + (i64)y * nx;
                for (int x = 1; x < nx; ++x) if (!row[x] && row[x - 1] == 2) { row[x] = 2; local = 1; }
                for (int x = nx - 2; x >= 0; --x) if (!row[x] && row[x + 1] == 2) { row[x] = 2; local = 1; }
            }
            __syncthreads();
            for (int x = threadIdx.x; x < nx; x += blockDim.x) {          // columns, both directions
                for (int y = 1; y < ny; ++y) if (!s[(i64)y * nx + x] && s[(i64)(y - 1) * nx + x] == 2) { s[(i64)y * nx + x] = 2; local = 1; }
                for (int y = ny - 2; y >= 0; --y) if (!s[(i64)y * nx + x] && s[(i64)(y + 1) * nx + x] == 2) { s[(i64)y * nx + x] = 2; local = 1; }
            }
            if (local) changed = 1;
            __syncthreads();
        } while (changed);
        for (int i = threadIdx.x; i < ny * nx; i += blockDim.x) s[i] = s[i] != 2;
        __syncthreads();
    }
}

// Largest 6-connected component (scipy ndimage.label + argmax of sizes), by union-find with
// atomicMin: every root is the smallest voxel index of its component, which is also scipy's
// tie-break (lowest label = first in raster order).
extern "C" __global__ void ccl_init(const u8* __restrict__ mask, i64 n, int* __restrict__ lab) {
    GRID_STRIDE(i, n) lab[i] = mask[i] ? (int)i : -1;
}

__device__ inline int ccl_root(volatile int* lab, int a) {
    while (lab[a] != a) a = lab[a];
    return a;
}

__device__ inline void ccl_unite(int* lab, int a, int b) {
    for (;;) {
        a = ccl_root(lab, a);
        b = ccl_root(lab, b);
        if (a == b) return;
        if (a > b) { int t = a; a = b; b = t; }
        int old = atomicMin(&lab[b], a);
        if (old == b) return;
        b = old;
    }
}

extern "C" __global__ void ccl_merge(int* lab, int nz, int ny, int nx) {
    GRID_STRIDE(i, (i64)nz * ny * nx) {
        if (lab[i] < 0) continue;
        int x = (int)(i % nx), y = (int)((i / nx) % ny), z = (int)(i / ((i64)nx * ny));
        if (x + 1 < nx && lab[i + 1] >= 0) ccl_unite(lab, (int)i, (int)(i + 1));
        if (y + 1 < ny && lab[i + nx] >= 0) ccl_unite(lab, (int)i, (int)(i + nx));
        if (z + 1 < nz && lab[i + (i64)nx * ny] >= 0) ccl_unite(lab, (int)i, (int)(i + (i64)nx * ny));
    }
}

extern "C" __global__ void ccl_count(int* lab, i64 n, unsigned int* __restrict__ size) {
    GRID_STRIDE(i, n) {
        if (lab[i] < 0) continue;
        int r = ccl_root(lab, (int)i);
        lab[i] = r;
        atomicAdd(&size[r], 1u);
    }
}

// best = max over roots of (size << 32 | ~root): biggest component, ties to the lowest root.
extern "C" __global__ void ccl_largest(const int* __restrict__ lab, const unsigned int* __restrict__ size, i64 n,
                                       u64* best) {
    GRID_STRIDE(i, n) if (lab[i] == (int)i) atomicMax(best, ((u64)size[i] << 32) | (u64)(0xffffffffu - (unsigned)i));
}

extern "C" __global__ void ccl_select(const int* __restrict__ lab, const u64* __restrict__ best, i64 n,
                                      u8* __restrict__ out) {
    int root = (int)(0xffffffffu - (unsigned)(*best & 0xffffffffu));
    bool any = *best != 0;
    GRID_STRIDE(i, n) out[i] = any && lab[i] == root;
}

extern "C" __global__ void count_nonzero(const u8* __restrict__ m, i64 n, u64* count) {
    u64 local = 0;
    GRID_STRIDE(i, n) local += m[i] != 0;
    if (local) atomicAdd(count, local);
}

// ------------------------------------------------------------------ window (runtime.resample.window)

// Stroke window to [-1, 1], -1 outside the brain; the mask is on the strip's grid (f x coarser in-plane).
extern "C" __global__ void window_image(const float* __restrict__ hu, const u8* __restrict__ brain_small, int nz,
                                        int ny, int nx, int f, float lo, float width, float* __restrict__ out) {
    GRID_STRIDE(idx, (i64)nz * ny * nx) {
        int x = (int)(idx % nx), y = (int)((idx / nx) % ny), z = (int)(idx / ((i64)nx * ny));
        u8 in_brain = brain_small[((i64)z * (ny / f) + y / f) * (nx / f) + x / f];
        float t = (hu[idx] - lo) / width;
        t = t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t);
        out[idx] = in_brain ? t * 2.0f - 1.0f : -1.0f;
    }
}

// ------------------------------------------------------------------ segmentation (runtime.segment)

// Logits (C, n) -> class per voxel; the first maximum wins, as numpy's argmax.
extern "C" __global__ void argmax_classes(const float* __restrict__ logits, int C, i64 n, u8* __restrict__ out) {
    GRID_STRIDE(i, n) {
        float best = logits[i];
        int arg = 0;
        for (int c = 1; c < C; ++c) {
            float v = logits[(i64)c * n + i];
            if (v > best) { best = v; arg = c; }
        }
        out[i] = (u8)arg;
    }
}

// Mirror averaging (runtime.segment._run): flip the network input in x in place, then add the
// second pass's probabilities, mirrored back, onto the first pass's.
extern "C" __global__ void flip_x(float* __restrict__ v, i64 rows, int nx) {
    const int half = nx / 2;
    GRID_STRIDE(idx, rows * half) {
        i64 row = idx / half;
        int x = (int)(idx % half);
        float* r = v + row * nx;
        float t = r[x];
        r[x] = r[nx - 1 - x];
        r[nx - 1 - x] = t;
    }
}

extern "C" __global__ void add_flipped_x(float* __restrict__ acc, const float* __restrict__ v, i64 rows, int nx) {
    GRID_STRIDE(idx, rows * nx) {
        i64 row = idx / nx;
        int x = (int)(idx % nx);
        acc[idx] += v[row * nx + (nx - 1 - x)];
    }
}

// The coarse regions' bounding box (zmin, zmax, ymin, ymax, xmin, xmax), counting only the
// components (labels and sizes from ccl_*) of at least `fraction` of the largest one
// (runtime.segment.significant_regions). box_reset starts it at (INT_MAX, -1, ...). One thread per row.
extern "C" __global__ void classes_at_least(const u8* __restrict__ classes, i64 n, int min_class, u8* __restrict__ out) {
    GRID_STRIDE(i, n) out[i] = classes[i] >= min_class;
}

extern "C" __global__ void largest_size(const int* __restrict__ lab, const unsigned int* __restrict__ size, i64 n,
                                        unsigned int* largest) {
    GRID_STRIDE(i, n) if (lab[i] == (int)i) atomicMax(largest, size[i]);
}

extern "C" __global__ void box_reset(int* box) {
    if (blockIdx.x == 0 && threadIdx.x == 0)
        for (int a = 0; a < 3; ++a) { box[2 * a] = 0x7fffffff; box[2 * a + 1] = -1; }
}

extern "C" __global__ void component_box(const int* __restrict__ lab, const unsigned int* __restrict__ size,
                                         const unsigned int* __restrict__ largest, double fraction, int nz, int ny,
                                         int nx, int* box) {
    const double keep = fraction * (double)(*largest);
    GRID_STRIDE(row, (i64)nz * ny) {
        const int* r = lab + row * nx;
        int lo = -1, hi = -1;
        for (int x = 0; x < nx; ++x)
            if (r[x] >= 0 && (double)size[r[x]] >= keep) { if (lo < 0) lo = x; hi = x; }
        if (lo < 0) continue;
        int y = (int)(row % ny), z = (int)(row / ny);
        atomicMin(&box[0], z); atomicMax(&box[1], z);
        atomicMin(&box[2], y); atomicMax(&box[3], y);
        atomicMin(&box[4], lo); atomicMax(&box[5], hi);
    }
}

// Labels on the model grid from the coarse classes (brain / background, repeated cs times)
// and the fine classes inside the fine box (repeated fs times, sided by x against centre).
extern "C" __global__ void compose_labels(const u8* __restrict__ coarse, int cy, int cx, int cs,
                                          const u8* __restrict__ fine, int fy, int fx, int fs,
                                          int bz0, int bz1, int by0, int by1, int bx0, int bx1, float centre,
                                          u8* __restrict__ labels, int nz, int ny, int nx) {
    GRID_STRIDE(idx, (i64)nz * ny * nx) {
        int x = (int)(idx % nx), y = (int)((idx / nx) % ny), z = (int)(idx / ((i64)nx * ny));
        u8 lab = 0;
        if (z >= bz0 && z < bz1 && y >= by0 && y < by1 && x >= bx0 && x < bx1) {
            int c = fine[((i64)(z - bz0) * fy + (y - by0) / fs) * fx + (x - bx0) / fs];
            int r = c - FIRST_REGION_CLASS;
            lab = r >= 0 ? (u8)(x > centre ? LEFT_FIRST_LABEL + r : RIGHT_FIRST_LABEL + r)
                         : (c == BRAIN_CLASS ? BRAIN_LABEL : 0);
        } else if (y < cy * cs && x < cx * cs) {
            lab = coarse[((i64)z * cy + y / cs) * cx + x / cs] > 0 ? BRAIN_LABEL : 0;
        }
        labels[idx] = lab;
    }
}

// ------------------------------------------------------------------ mirrored patches (runtime.patches)

// Per region: voxel count and index sums of (left region | x-mirrored right region). One thread per row.
extern "C" __global__ void region_sums(const u8* __restrict__ labels, int nz, int ny, int nx,
                                       const int* __restrict__ region, int B, u64* sums) {
    GRID_STRIDE(row, (i64)nz * ny) {
        const u8* r = labels + row * nx;
        int y = (int)(row % ny), z = (int)(row / ny);
        for (int b = 0; b < B; ++b) {
            u8 left = (u8)(LEFT_FIRST_LABEL + region[b]), right = (u8)(RIGHT_FIRST_LABEL + region[b]);
            u64 count = 0, sx = 0;
            for (int x = 0; x < nx; ++x)
                if (r[x] == left || r[nx - 1 - x] == right) { count++; sx += x; }
            if (!count) continue;
            atomicAdd(&sums[4 * b + 0], count * (u64)z);
            atomicAdd(&sums[4 * b + 1], count * (u64)y);
            atomicAdd(&sums[4 * b + 2], sx);
            atomicAdd(&sums[4 * b + 3], count);
        }
    }
}

__device__ inline int crop_origin(const u64* s, int axis, int extent, int size) {
    double c = s[3] ? (double)s[axis] / (double)s[3] : extent / 2.0;
    return (int)floor(c - (size - 1) / 2.0 + 0.5);
}

// (B, side[left, right], channel[ct, mask], cz, cy, cx): the right side is x-mirrored, so both
// crops look like a left region. Written straight into the classifier's input buffer.
extern "C" __global__ void crop_pairs(const float* __restrict__ image, const u8* __restrict__ labels, int nz, int ny,
                                      int nx, const int* __restrict__ region, int B, const u64* __restrict__ sums,
                                      int cz, int cy, int cx, float* __restrict__ out) {
    const i64 vol = (i64)cz * cy * cx;
    GRID_STRIDE(idx, (i64)B * 4 * vol) {
        i64 v = idx % vol;
        int ch = (int)((idx / vol) % 2), side = (int)((idx / (2 * vol)) % 2), b = (int)(idx / (4 * vol));
        int x = (int)(v % cx), y = (int)((v / cx) % cy), z = (int)(v / ((i64)cx * cy));
        const u64* s = sums + 4 * b;
        int gz = crop_origin(s, 0, nz, cz) + z, gy = crop_origin(s, 1, ny, cy) + y, gx = crop_origin(s, 2, nx, cx) + x;
        bool inside = gz >= 0 && gz < nz && gy >= 0 && gy < ny && gx >= 0 && gx < nx;
        float val = ch == 0 ? -1.0f : 0.0f;
        if (inside) {
            i64 at = ((i64)gz * ny + gy) * nx + (side == 0 ? gx : nx - 1 - gx);
            u8 want = (u8)(side == 0 ? LEFT_FIRST_LABEL + region[b] : RIGHT_FIRST_LABEL + region[b]);
            val = ch == 0 ? image[at] : (labels[at] == want ? 1.0f : 0.0f);
        }
        out[idx] = val;
    }
}
