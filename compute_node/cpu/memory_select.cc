// Implementation of compute_node/cpu/memory_select.h.
#include "compute_node/cpu/memory_select.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "compute_node/cpu/kernels.h"

namespace ultramem {

void TopM(const float* v, int n, int m, int* out) {
  auto key = [v](int i) {
    const float x = v[i];
    return std::isnan(x) ? -std::numeric_limits<float>::infinity() : x;
  };
  auto better = [&](int a, int b) {
    const float ka = key(a), kb = key(b);
    return ka > kb || (ka == kb && a < b);
  };
  thread_local std::vector<int> idx;
  idx.resize(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + m, idx.end(), better);
  std::copy(idx.begin(), idx.begin() + m, out);
}

void SelectRows(ThreadPool& pool, const MemoryConfig& mc, const MemoryLayerWeights& w,
                const float* u, int64_t tokens, int64_t hidden, std::vector<float>* scratch,
                Selections* out) {
  const int64_t dk = mc.key_dim, n = mc.NumKeys(), r = mc.tucker_rank, heads = mc.heads;
  const int m = mc.topk, cores = mc.tucker_cores;
  const int64_t K = mc.SelectionsPerToken();
  const int64_t nr = n * r;
  const int64_t num_rows = mc.NumRows();

  // Layout of scratch: q[T, 2Dk] | qn[2][T][Dk] | S[H][2][T][n·r]
  const int64_t q_size = tokens * 2 * dk;
  const int64_t s_size = heads * 2 * tokens * nr;
  scratch->resize(q_size * 2 + s_size);
  float* q = scratch->data();
  float* qn = q + q_size;
  float* S = qn + q_size;

  // Steps 1–2: query and its two normalized halves.
  MatMulWT(pool, u, tokens, w.query_proj.data(), 2 * dk, hidden, q);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int side = 0; side < 2; ++side) {
      RmsNorm(q + t * 2 * dk + side * dk, w.query_norm.data(), dk, mc.norm_eps,
              qn + (side * tokens + t) * dk);
    }
  }
  // Step 4: S[h][side][t][i·r+a] = <q_side[t], K̂[h, side, i, :, a]>, one product per (h, side).
  for (int64_t h = 0; h < heads; ++h) {
    for (int side = 0; side < 2; ++side) {
      MatMulWT(pool, qn + side * tokens * dk, tokens, w.keys_hat.data() + (h * 2 + side) * nr * dk,
               nr, dk, S + (h * 2 + side) * tokens * nr);
    }
  }

  out->rows.resize(tokens * K);
  out->groups.resize(tokens * K);
  out->scores.resize(tokens * K * cores);
  out->t_index.resize(tokens * K);

  // Steps 5–9 per token, in parallel.
  pool.ParallelFor(tokens, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> p_row(n), p_col(n), a_mat(static_cast<size_t>(cores) * m * r),
        g(static_cast<size_t>(m) * m), g_core(static_cast<size_t>(cores) * m * m);
    std::vector<int> i_row(m), i_col(m), best(m);
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        const float* s_row = S + ((h * 2 + 0) * tokens + t) * nr;
        const float* s_col = S + ((h * 2 + 1) * tokens + t) * nr;
        const float* cu = w.core_u.data() + h * r;
        const float* cv = w.core_v.data() + h * r;
        // Step 5: rank-1 proxies. Step 6: top-m rows and columns.
        for (int64_t i = 0; i < n; ++i) {
          float pr = 0.0f, pc = 0.0f;
          for (int64_t a = 0; a < r; ++a) {
            pr += s_row[i * r + a] * cu[a];
            pc += s_col[i * r + a] * cv[a];
          }
          p_row[i] = pr;
          p_col[i] = pc;
        }
        TopM(p_row.data(), static_cast<int>(n), m, i_row.data());
        TopM(p_col.data(), static_cast<int>(n), m, i_col.data());
        // Step 7: G_c[x, y] = S_row[I_row[x], :] · core_c · S_col[I_col[y], :]ᵀ.
        std::fill(g.begin(), g.end(), 0.0f);
        for (int c = 0; c < cores; ++c) {
          const float* core = w.cores.data() + (h * cores + c) * r * r;
          float* a_c = a_mat.data() + static_cast<size_t>(c) * m * r;
          for (int x = 0; x < m; ++x) {
            const float* sr = s_row + static_cast<int64_t>(i_row[x]) * r;
            for (int64_t b = 0; b < r; ++b) {
              float acc = 0.0f;
              for (int64_t a = 0; a < r; ++a) acc += sr[a] * core[a * r + b];
              a_c[x * r + b] = acc;
            }
          }
          float* gc = g_core.data() + static_cast<size_t>(c) * m * m;
          for (int x = 0; x < m; ++x) {
            for (int y = 0; y < m; ++y) {
              const float* sc = s_col + static_cast<int64_t>(i_col[y]) * r;
              float acc = 0.0f;
              for (int64_t b = 0; b < r; ++b) acc += a_c[x * r + b] * sc[b];
              gc[x * m + y] = acc;
            }
          }
          for (int e = 0; e < m * m; ++e) g[e] += gc[e];
        }
        // Step 8: top-m of the m×m grid. Step 9: shuffle to (row, group).
        TopM(g.data(), m * m, m, best.data());
        for (int k = 0; k < m; ++k) {
          const int jdx = best[k];
          const int64_t virt = static_cast<int64_t>(i_row[jdx / m]) * n + i_col[jdx % m];
          const int64_t tv = w.shuffle_index[virt];
          const int64_t sel = t * K + h * m + k;
          out->t_index[sel] = tv;
          out->rows[sel] = tv % num_rows;
          out->groups[sel] = static_cast<int32_t>(tv / num_rows);
          for (int c = 0; c < cores; ++c) {
            out->scores[sel * cores + c] = g_core[static_cast<size_t>(c) * m * m + jdx];
          }
        }
      }
    }
  });
}

}  // namespace ultramem
