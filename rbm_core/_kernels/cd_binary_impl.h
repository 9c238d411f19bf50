/* The typed body of cd_binary.c, included once per floating type with REAL, SUFFIX (the exported
 * names' suffix), EXP (a vectorisable exp), UNIFORM (64 random bits to a uniform in [0, 1)), TILE
 * (the chain's columns summed at once, for four samples at a time, so the partial sums stay in
 * registers: 128 bytes, two 64-byte vectors with AVX-512, four 32-byte ones without) and
 * GRADIENT_TILE (the gradient's, one row at a time: 256 bytes). */

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SUFFIX)
#define VECTOR FN(vector)
#define LANES (VECTOR_BYTES / (int64_t)sizeof(REAL))
#define NV (TILE / LANES)               /* vectors per chain tile row */
#define GRADIENT_NV (GRADIENT_TILE / LANES)

typedef REAL VECTOR __attribute__((vector_size(VECTOR_BYTES), aligned(sizeof(REAL)), may_alias));

/* The number of ones of x, or -1 where an entry is neither exactly 0 nor exactly 1. */
int64_t FN(rbm_count_binary)(const REAL *x, int64_t n)
{
    int64_t ones = 0, other = 0;
    for (int64_t i = 0; i < n; i++) {
        ones += x[i] == (REAL)1;
        other += (x[i] != (REAL)0) & (x[i] != (REAL)1);
    }
    return other ? -1 : ones;
}

/* The uniforms number first .. first + count - 1 of the chain run with this key (for tests). */
void FN(rbm_uniforms)(uint64_t key, uint64_t first, int64_t count, REAL *out)
{
    for (int64_t i = 0; i < count; i++)
        out[i] = UNIFORM(splitmix_output(key, first + (uint64_t)i));
}

/* dst[0 .. count vectors) = src[..] by vector moves (gcc calls memcpy for 256 bytes). */
static inline void FN(copy_vectors)(REAL *restrict dst, const REAL *restrict src, int count)
{
    for (int v = 0; v < count; v++) ((VECTOR *)dst)[v] = ((const VECTOR *)src)[v];
}

#define COPY_TILE(dst, src) FN(copy_vectors)((dst), (src), NV)

/* acc[0 .. GRADIENT_TILE) += the sum of the listed rows of `rows` (each GRADIENT_TILE wide, 64-byte
 * aligned). */
static inline void FN(accumulate_wide)(VECTOR *restrict acc, const REAL *restrict rows, const int32_t *restrict list,
                                       int64_t count)
{
    VECTOR a[GRADIENT_NV];
    for (int v = 0; v < GRADIENT_NV; v++) a[v] = acc[v];
    for (int64_t k = 0; k < count; k++) {
        const VECTOR *row = (const VECTOR *)__builtin_assume_aligned(rows + (int64_t)list[k] * GRADIENT_TILE, 64);
        for (int v = 0; v < GRADIENT_NV; v++) a[v] += row[v];
    }
    for (int v = 0; v < GRADIENT_NV; v++) acc[v] = a[v];
}

/* For j < 4: acc[j][0 .. TILE) += the sum of the rows of `rows` (each TILE wide, 64-byte aligned) in
 * list[j][0 .. count[j]), in the list's order. Four independent sums at once, so that the adds'
 * latency overlaps and a narrow tile (whose panel stays closer to the core) loses nothing to it. */
static inline void FN(accumulate4)(VECTOR (*restrict acc)[NV], const REAL *restrict rows,
                                   const int32_t *const list[4], const int64_t count[4])
{
    int64_t common = count[0];
    for (int j = 1; j < 4; j++) common = count[j] < common ? count[j] : common;
    VECTOR a[4][NV];
    for (int j = 0; j < 4; j++)
        for (int v = 0; v < NV; v++) a[j][v] = acc[j][v];
    const int32_t *l0 = list[0], *l1 = list[1], *l2 = list[2], *l3 = list[3];
    for (int64_t k = 0; k < common; k++) {
        const VECTOR *r0 = (const VECTOR *)__builtin_assume_aligned(rows + (int64_t)l0[k] * TILE, 64);
        const VECTOR *r1 = (const VECTOR *)__builtin_assume_aligned(rows + (int64_t)l1[k] * TILE, 64);
        const VECTOR *r2 = (const VECTOR *)__builtin_assume_aligned(rows + (int64_t)l2[k] * TILE, 64);
        const VECTOR *r3 = (const VECTOR *)__builtin_assume_aligned(rows + (int64_t)l3[k] * TILE, 64);
        for (int v = 0; v < NV; v++) {
            a[0][v] += r0[v]; a[1][v] += r1[v]; a[2][v] += r2[v]; a[3][v] += r3[v];
        }
    }
    for (int j = 0; j < 4; j++) {
        for (int64_t k = common; k < count[j]; k++) {
            const VECTOR *row = (const VECTOR *)__builtin_assume_aligned(rows + (int64_t)list[j][k] * TILE, 64);
            for (int v = 0; v < NV; v++) a[j][v] += row[v];
        }
        for (int v = 0; v < NV; v++) acc[j][v] = a[j][v];
    }
}

/* mean = sigmoid(field); state = (u < mean) for the uniforms numbered first .. first + width - 1
 * (taken from `uniforms` when given, else generated from `key`). */
static inline void FN(sample)(const REAL *restrict field, int64_t width, uint64_t key,
                              const REAL *restrict uniforms, uint64_t first, REAL *restrict mean,
                              REAL *restrict state)
{
    REAL p[TILE], u[TILE];
    for (int64_t j = 0; j < TILE; j++)
        p[j] = (REAL)1 / ((REAL)1 + EXP(-field[j]));
    if (uniforms != NULL)
        for (int64_t j = 0; j < width; j++) u[j] = uniforms[first + j];
    else
        for (int64_t j = 0; j < TILE; j++) u[j] = UNIFORM(splitmix_output(key, first + (uint64_t)j));
    for (int64_t j = 0; j < width; j++) {  /* one loop for both: gcc would make a lone copy a memcpy call */
        mean[j] = p[j];
        state[j] = (REAL)(u[j] < p[j]);
    }
}

/* The columns start .. start + width of source (rows, stride) as a panel (rows, TILE), zero-padded
 * on the right: contiguous, so the rows summed afterwards share pages and cache sets. */
static void FN(copy_panel)(REAL *restrict panel, const REAL *restrict source, int64_t rows, int64_t stride,
                           int64_t start, int64_t width)
{
    if (width == TILE) {  /* vector moves, no library call per row */
        for (int64_t r = 0; r < rows; r++) COPY_TILE(panel + r * TILE, source + r * stride + start);
        return;
    }
    for (int64_t r = 0; r < rows; r++) {
        REAL *out = panel + r * TILE;
        for (int64_t j = 0; j < TILE; j++) out[j] = j < width ? source[r * stride + start + j] : (REAL)0;
    }
}

/* The same for the columns of sourceᵀ, i.e. panel[r][c] = source[(start + c) * stride + r] for the
 * `rows` = columns of source: the visible layer's panels come straight from W, transposed in
 * BLOCK x BLOCK register blocks. */
static void FN(copy_panel_transposed)(REAL *restrict panel, const REAL *restrict source, int64_t rows,
                                      int64_t stride, int64_t start, int64_t width)
{
    if (width < TILE) memset(panel, 0, sizeof(REAL) * TILE * rows);
    int64_t full_rows = rows / BLOCK * BLOCK, full_width = width / BLOCK * BLOCK;
    for (int64_t r = 0; r < full_rows; r += BLOCK)
        for (int64_t c = 0; c < full_width; c += BLOCK)
            CAT(transpose_block, SUFFIX)(source + (start + c) * stride + r, stride, panel + r * TILE + c, TILE);
    for (int64_t c = 0; c < width; c++) {  /* the edges */
        const REAL *in = source + (start + c) * stride;
        for (int64_t r = c < full_width ? full_rows : 0; r < rows; r++) panel[r * TILE + c] = in[r];
    }
}

/* Four Russians: table row g * 16 + m = the sum of the panel rows 4g + k for the bits k of m, so a
 * 0/1 input adds one table row per group of four units that is not all zero, instead of one panel
 * row per one. */
static void FN(build_table)(REAL *restrict table, const REAL *restrict panel, int64_t rows)
{
    int64_t groups = (rows + 3) / 4;
    for (int64_t g = 0; g < groups; g++) {
        VECTOR *base = (VECTOR *)__builtin_assume_aligned(table + g * 16 * TILE, 64);
        for (int v = 0; v < NV; v++) base[v] = (VECTOR){0};
        for (int m = 1; m < 16; m++) {
            int k = __builtin_ctz(m);
            VECTOR *out = base + m * NV, *rest = base + (m & (m - 1)) * NV;
            if (4 * g + k < rows) {
                const VECTOR *row = (const VECTOR *)__builtin_assume_aligned(panel + (4 * g + k) * TILE, 64);
                for (int v = 0; v < NV; v++) out[v] = rest[v] + row[v];
            } else {
                for (int v = 0; v < NV; v++) out[v] = rest[v];
            }
        }
    }
}

/* Bit j of the result: x[j] > 0, for j < count <= 64 (x is 0/1, checked: an ordered comparison
 * suffices). */
static inline uint64_t FN(row_bits)(const REAL *x, int64_t count)
{
    uint64_t bits = 0;
    int64_t j = 0;
    for (; j + BLOCK <= count; j += BLOCK) bits |= CAT(positive_bits, SUFFIX)(x + j) << j;
    for (; j < count; j++) bits |= (uint64_t)(x[j] > (REAL)0) << j;
    return bits;
}

/* The ones of a 0/1 batch x (batch, n): ones[s * n ..] the column indices of the ones of row s,
 * bits[s * words ..] its bits (64 to a word), num_codes[s] its number of groups of four that are not
 * all zero (table rows that list_codes would list). */
static void FN(list_rows)(int64_t batch, int64_t n, const REAL *x, int32_t *ones, int32_t *num_ones, uint64_t *bits,
                          int32_t *num_codes)
{
    int64_t words = (n + 63) / 64;
#pragma omp for schedule(static)
    for (int64_t s = 0; s < batch; s++) {
        const REAL *row = x + s * n;
        int32_t *list = ones + s * n;
        int32_t count = 0, code_count = 0;
        for (int64_t w = 0; w < words; w++) {
            int64_t width = n - 64 * w < 64 ? n - 64 * w : 64;
            uint64_t word = FN(row_bits)(row + 64 * w, width);
            bits[s * words + w] = word;
            for (uint64_t rest = word; rest != 0; rest &= rest - 1)
                list[count++] = (int32_t)(64 * w) + __builtin_ctzll(rest);
            code_count += __builtin_popcountll((word | word >> 1 | word >> 2 | word >> 3) & 0x1111111111111111ULL);
        }
        num_ones[s] = count;
        num_codes[s] = code_count;
    }
}

/* codes[s * groups ..] the table rows g * 16 + m of the nonzero groups of four of row s (m the
 * group's bits), from the bits of list_rows; only for a layer that sums by tables. */
static void FN(list_codes)(int64_t batch, int64_t n, const uint64_t *bits, int32_t *codes)
{
    int64_t words = (n + 63) / 64, groups = (n + 3) / 4;
#pragma omp for schedule(static)
    for (int64_t s = 0; s < batch; s++) {
        int32_t *code_list = codes + s * groups, code_count = 0;
        for (int64_t w = 0; w < words; w++) {
            uint64_t word = bits[s * words + w];
            int64_t width = n - 64 * w < 64 ? n - 64 * w : 64;
            for (int32_t k = 0; k < (width + 3) / 4; k++) {  /* branch-free: the nibbles are random */
                int32_t mask = (int32_t)(word >> (4 * k)) & 15;
                code_list[code_count] = 4 * ((int32_t)(64 * w) + 4 * k) + mask;
                code_count += mask != 0;
            }
        }
    }
}

/* The lists that a layer's input needs: see list_rows and list_codes. */
typedef struct {
    int32_t *ones, *num_ones, *codes, *num_codes;
    uint64_t *bits;
} FN(lists);

/* One layer of the chain for every row s of the batch: field = bias + the input row's ones times
 * `weight` (n_in, n_out; transposed: weight is (n_out, n_in) and its transpose is meant), then the
 * mean and a sample. The team splits the output columns in tiles; each tile's rows of weight are
 * first copied into a contiguous panel (or, where the input is dense enough, a Four-Russians table
 * of it), which stays in the thread's cache while it runs through the batch. */
static void FN(layer)(int64_t batch, int64_t n_in, int64_t n_out, const REAL *weight, int transposed,
                      const REAL *bias, FN(lists) lists, uint64_t key, const REAL *uniforms, uint64_t first,
                      REAL *mean, REAL *state, REAL *work, int tables)
{
    int64_t groups = (n_in + 3) / 4, total_ones = 0, total_codes = 0;
    for (int64_t s = 0; s < batch; s++) {
        total_ones += lists.num_ones[s];
        total_codes += lists.num_codes[s];
    }
    /* a table costs 15 row sums per group to build, each about three lookups' worth (measured: they
     * are stores), then one lookup per nonzero group and row */
    int use_table = tables == TABLES_BY_COST ? total_codes + 45 * groups < total_ones : tables == TABLES_ALWAYS;
    REAL *panel = work, *table = work == NULL ? NULL : work + TILE * 4 * groups;
    if (use_table) FN(list_codes)(batch, n_in, lists.bits, lists.codes);  /* with the team's barrier */
    int64_t num_tiles = (n_out + TILE - 1) / TILE;
#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < num_tiles; tile++) {
        if (work == NULL) continue;
        int64_t start = tile * TILE;
        int64_t width = n_out - start < TILE ? n_out - start : TILE;
        if (transposed)
            FN(copy_panel_transposed)(panel, weight, n_in, n_in, start, width);
        else
            FN(copy_panel)(panel, weight, n_in, n_out, start, width);
        if (use_table) FN(build_table)(table, panel, n_in);
        REAL tile_bias[TILE] __attribute__((aligned(64))) = {0};
        memcpy(tile_bias, bias + start, sizeof(REAL) * width);
        const REAL *rows = use_table ? table : panel;
        const int32_t *all = use_table ? lists.codes : lists.ones;
        const int32_t *counts = use_table ? lists.num_codes : lists.num_ones;
        int64_t stride = use_table ? groups : n_in;
        for (int64_t s0 = 0; s0 < batch; s0 += 4) {  /* four samples at a time: see accumulate4 */
            VECTOR acc[4][NV];
            const int32_t *list[4];
            int64_t count[4];
            for (int j = 0; j < 4; j++) {
                COPY_TILE((REAL *)acc[j], tile_bias);
                list[j] = all + (s0 + j < batch ? s0 + j : s0) * stride;
                count[j] = s0 + j < batch ? counts[s0 + j] : 0;  /* past the end: nothing, not stored */
            }
            FN(accumulate4)(acc, rows, list, count);
            for (int j = 0; j < 4 && s0 + j < batch; j++) {
                int64_t at = (s0 + j) * n_out + start;
                FN(sample)((const REAL *)acc[j], width, key, uniforms, first + (uint64_t)at, mean + at, state + at);
            }
        }
    }
}

/* Elements of a thread's work space for a layer with n_in inputs: a panel and a table. */
static int64_t FN(work_size)(int64_t n_in) { return TILE * 4 * ((n_in + 3) / 4) * 5; }

/* CD-k's chain for `batch` rows of 0/1 data (batch, V) and weight (V, H): h0 ~ p(h|v0) (means in
 * positive_hidden), then num_steps times v ~ p(v|h) (means in visible_mean), h ~ p(h|v) (means in
 * hidden_mean). The final states are left in visible and hidden. `tables`: TABLES_BY_COST, or
 * TABLES_NEVER / TABLES_ALWAYS to force a layer's method (for tests). Returns 0, or -1 when out of
 * memory. */
int FN(rbm_cd_chain)(int64_t batch, int64_t num_visible, int64_t num_hidden, int64_t num_steps,
                     const REAL *weight, const REAL *visible_bias, const REAL *hidden_bias, const REAL *data,
                     uint64_t key, const REAL *uniforms, REAL *visible, REAL *hidden, REAL *visible_mean,
                     REAL *hidden_mean, REAL *positive_hidden, int tables, int num_threads)
{
    int64_t widest = num_visible > num_hidden ? num_visible : num_hidden, groups = (widest + 3) / 4;
    int64_t words = (widest + 63) / 64;
    /* one block: the rows' bits (8-byte words first, so aligned), then the int32 lists and counts */
    uint64_t *bits = malloc(sizeof(uint64_t) * batch * words + sizeof(int32_t) * batch * (widest + groups + 2));
    if (bits == NULL) return -1;
    int32_t *memory = (int32_t *)(bits + batch * words);
    int32_t *codes = memory + batch * widest, *counts = codes + batch * groups;
    FN(lists) lists = {memory, counts, codes, counts + batch, bits};
    int failed = 0;
    size_t work_bytes = sizeof(REAL) * (size_t)FN(work_size)(widest);
#pragma omp parallel num_threads(team_size(num_threads)) reduction(| : failed)
    {
        REAL *work = scratch(work_bytes);
        failed = work == NULL;  /* its tiles are skipped: the caller gets -1 and discards the results */
        FN(list_rows)(batch, num_visible, data, lists.ones, lists.num_ones, lists.bits, lists.num_codes);
        FN(layer)(batch, num_visible, num_hidden, weight, 0, hidden_bias, lists, key, uniforms, 0,
                  positive_hidden, hidden, work, tables);
        uint64_t first = (uint64_t)(batch * num_hidden);
        for (int64_t step = 0; step < num_steps; step++) {
            FN(list_rows)(batch, num_hidden, hidden, lists.ones, lists.num_ones, lists.bits, lists.num_codes);
            FN(layer)(batch, num_hidden, num_visible, weight, 1, visible_bias, lists, key, uniforms, first,
                      visible_mean, visible, work, tables);
            first += (uint64_t)(batch * num_visible);
            FN(list_rows)(batch, num_visible, visible, lists.ones, lists.num_ones, lists.bits, lists.num_codes);
            FN(layer)(batch, num_visible, num_hidden, weight, 0, hidden_bias, lists, key, uniforms, first,
                      hidden_mean, hidden, work, tables);
            first += (uint64_t)(batch * num_hidden);
        }
    }
    free(bits);
    return failed ? -1 : 0;
}

/* The CD gradient (the gradient of mean F(data) - mean F(chain ends)) from two 0/1 batches of the
 * same size and their hidden means:
 *   grad_weight = (visibleᵀ visible_hidden - dataᵀ data_hidden) / batch   (V, H)
 *   grad_visible_bias = mean(visible) - mean(data),  grad_hidden_bias = mean(visible_hidden) - mean(data_hidden).
 * Row i of grad_weight sums one hidden row per sample s where unit i is on in either batch:
 * visible_hidden[s] - data_hidden[s] where it is on in both (CD's chains mostly agree with their
 * data), visible_hidden[s] or -data_hidden[s] where in one only. These 3 * batch rows form each
 * tile's panel. Returns 0, or -1 when out of memory. */
int FN(rbm_cd_gradient)(int64_t batch, int64_t num_visible, int64_t num_hidden, const REAL *data,
                        const REAL *data_hidden, const REAL *visible, const REAL *visible_hidden,
                        REAL *grad_weight, REAL *grad_visible_bias, REAL *grad_hidden_bias, int num_threads)
{
    int64_t words = (num_visible + 63) / 64;
    int32_t *lists = malloc(sizeof(int32_t) * (batch + 1) * num_visible);
    uint64_t *bits = malloc(sizeof(uint64_t) * 2 * batch * words);
    if (lists == NULL || bits == NULL) {
        free(lists); free(bits);
        return -1;
    }
    int32_t *counts = lists + batch * num_visible;
    uint64_t *data_bits = bits, *chain_bits = bits + batch * words;
    const REAL scale = (REAL)1 / (REAL)batch;
    int64_t num_tiles = (num_hidden + GRADIENT_TILE - 1) / GRADIENT_TILE;
    int failed = 0;
    size_t work_bytes = sizeof(REAL) * GRADIENT_TILE * 3 * batch;
#pragma omp parallel num_threads(team_size(num_threads)) reduction(| : failed)
    {
        REAL *panel = scratch(work_bytes);
        failed = panel == NULL;
#pragma omp for schedule(static)
        for (int64_t s = 0; s < batch; s++)
            for (int64_t w = 0; w < words; w++) {
                int64_t width = num_visible - 64 * w < 64 ? num_visible - 64 * w : 64;
                data_bits[s * words + w] = FN(row_bits)(data + s * num_visible + 64 * w, width);
                chain_bits[s * words + w] = FN(row_bits)(visible + s * num_visible + 64 * w, width);
            }
        /* Unit i's list: the panel rows of the samples where it is on, in the order of s (so the sums
         * do not depend on the threads): s (both on), batch + s (chain only), 2 batch + s (data only). */
#pragma omp for schedule(dynamic, 1)
        for (int64_t w = 0; w < words; w++) {
            int32_t count[64] = {0}, difference[64] = {0};
            for (int64_t s = 0; s < batch; s++) {
                uint64_t on_data = data_bits[s * words + w], on_chain = chain_bits[s * words + w];
                for (uint64_t rest = on_data | on_chain; rest != 0; rest &= rest - 1) {
                    int bit = __builtin_ctzll(rest);
                    int32_t in_data = (int32_t)(on_data >> bit) & 1, in_chain = (int32_t)(on_chain >> bit) & 1;
                    int32_t row = (int32_t)s + (int32_t)batch * (in_data ? 2 * !in_chain : 1);
                    lists[(64 * w + bit) * batch + count[bit]++] = row;
                    difference[bit] += in_chain - in_data;
                }
            }
            for (int64_t bit = 0; bit < 64 && 64 * w + bit < num_visible; bit++) {
                counts[64 * w + bit] = count[bit];
                grad_visible_bias[64 * w + bit] = (REAL)difference[bit] * scale;
            }
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t tile = 0; tile < num_tiles; tile++) {
            if (panel == NULL) continue;
            int64_t start = tile * GRADIENT_TILE;
            int64_t width = num_hidden - start < GRADIENT_TILE ? num_hidden - start : GRADIENT_TILE;
            VECTOR column_sum[GRADIENT_NV] = {0};
            for (int64_t s = 0; s < batch; s++) {
                REAL *both = panel + s * GRADIENT_TILE, *chain = both + batch * GRADIENT_TILE;
                REAL *only_data = chain + batch * GRADIENT_TILE;
                const REAL *q = visible_hidden + s * num_hidden + start, *p = data_hidden + s * num_hidden + start;
                for (int64_t j = 0; j < GRADIENT_TILE; j++) {
                    REAL qj = j < width ? q[j] : 0, pj = j < width ? p[j] : 0;
                    both[j] = qj - pj;
                    chain[j] = qj;
                    only_data[j] = -pj;
                }
                const VECTOR *row = (const VECTOR *)__builtin_assume_aligned(both, 64);
                for (int v = 0; v < GRADIENT_NV; v++) column_sum[v] += row[v];
            }
            for (int v = 0; v < GRADIENT_NV; v++) column_sum[v] *= scale;
            memcpy(grad_hidden_bias + start, column_sum, sizeof(REAL) * width);
            for (int64_t i = 0; i < num_visible; i++) {
                VECTOR acc[GRADIENT_NV] = {0};
                FN(accumulate_wide)(acc, panel, lists + i * batch, counts[i]);
                for (int v = 0; v < GRADIENT_NV; v++) acc[v] *= scale;
                REAL *out = grad_weight + i * num_hidden + start;
                if (width == GRADIENT_TILE)
                    FN(copy_vectors)(out, (const REAL *)acc, GRADIENT_NV);
                else
                    for (int64_t j = 0; j < width; j++) out[j] = ((const REAL *)acc)[j];
            }
        }
    }
    free(lists); free(bits);
    return failed ? -1 : 0;
}

#undef VECTOR
#undef LANES
#undef NV
#undef GRADIENT_NV
#undef COPY_TILE
#undef FN
#undef CAT
#undef CAT_
