/* A stand-in for cuRAND (libcurand.so.10) for a GPU machine that has none: PyTorch's CUDA 13
 * wheels from 2.10 on no longer bring nvidia-curand, and candle 0.11 links cuRAND (cudarc's
 * dynamic-linking) and creates a generator whenever it opens a CUDA device. fedssl draws all
 * of its random numbers on the CPU; candle only uses cuRAND for the initial values of new
 * variables (overwritten by fedssl's seeded init) and for Tensor::rand / randn on the GPU.
 *
 * So this library implements the few entry points candle calls, on the host: uniform (0, 1]
 * and normal (Box-Muller) numbers from a xorshift64* stream seeded by
 * curandSetPseudoRandomGeneratorSeed, copied to the device with cuMemcpyHtoDAsync on the
 * generator's stream (curandSetStream) and waited for. Right distributions, not cuRAND's
 * sequences, and slower: fine for initialisation. tools/gpu-bundle builds it with the version
 * node libcurand.so.10 (tools/curand-stub.map), checks that it exports every curand* symbol the
 * binaries import, and tests it against a fake driver; run.sh uses it only when it finds no
 * real libcurand.so.10, and says so.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef struct CUstream_st *CUstream;
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t bytes, CUstream stream);
CUresult cuStreamSynchronize(CUstream stream);

enum {
  CURAND_STATUS_SUCCESS = 0,
  CURAND_STATUS_NOT_INITIALIZED = 101,
  CURAND_STATUS_ALLOCATION_FAILED = 102,
  CURAND_STATUS_LAUNCH_FAILURE = 201,
};

struct generator {
  uint64_t state;
  CUstream stream;
};

static uint64_t next(struct generator *g) {
  /* xorshift64* (Vigna 2016) */
  g->state ^= g->state >> 12;
  g->state ^= g->state << 25;
  g->state ^= g->state >> 27;
  return g->state * 0x2545F4914F6CDD1DULL;
}

/* uniform in (0, 1], as cuRAND's */
static double uniform(struct generator *g) { return ((next(g) >> 11) + 1) * (1.0 / 9007199254740992.0); }

static void seed(struct generator *g, unsigned long long s) {
  g->state = s * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
  if (!g->state) g->state = 1;
}

int curandCreateGenerator(struct generator **out, int rng_type) {
  (void)rng_type;
  struct generator *g = calloc(1, sizeof *g);
  if (!g) return CURAND_STATUS_ALLOCATION_FAILED;
  seed(g, 0);
  *out = g;
  return CURAND_STATUS_SUCCESS;
}

int curandDestroyGenerator(struct generator *g) {
  free(g);
  return CURAND_STATUS_SUCCESS;
}

int curandSetPseudoRandomGeneratorSeed(struct generator *g, unsigned long long s) {
  if (!g) return CURAND_STATUS_NOT_INITIALIZED;
  seed(g, s);
  return CURAND_STATUS_SUCCESS;
}

int curandSetStream(struct generator *g, CUstream stream) {
  if (!g) return CURAND_STATUS_NOT_INITIALIZED;
  g->stream = stream;
  return CURAND_STATUS_SUCCESS;
}

int curandSetGeneratorOffset(struct generator *g, unsigned long long offset) {
  (void)g;
  (void)offset;
  return CURAND_STATUS_SUCCESS;
}

int curandGetVersion(int *v) {
  *v = 10400;
  return CURAND_STATUS_SUCCESS;
}

static int upload(struct generator *g, void *dst, const void *src, size_t bytes) {
  if (cuMemcpyHtoDAsync_v2((CUdeviceptr)(uintptr_t)dst, src, bytes, g->stream)) return CURAND_STATUS_LAUNCH_FAILURE;
  if (cuStreamSynchronize(g->stream)) return CURAND_STATUS_LAUNCH_FAILURE;
  return CURAND_STATUS_SUCCESS;
}

/* fill(g, buf, i) writes element i; then the buffer goes to the device */
#define GENERATE(T, BODY)                                                       \
  do {                                                                          \
    if (!g) return CURAND_STATUS_NOT_INITIALIZED;                               \
    T *buf = malloc((n ? n : 1) * sizeof(T));                                   \
    if (!buf) return CURAND_STATUS_ALLOCATION_FAILED;                           \
    for (size_t i = 0; i < n; i++) { BODY }                                     \
    int rc = upload(g, out, buf, n * sizeof(T));                                \
    free(buf);                                                                  \
    return rc;                                                                  \
  } while (0)

int curandGenerateUniform(struct generator *g, float *out, size_t n) {
  GENERATE(float, buf[i] = (float)uniform(g); if (buf[i] <= 0.0f) buf[i] = 1.0f;);
}

int curandGenerateUniformDouble(struct generator *g, double *out, size_t n) {
  GENERATE(double, buf[i] = uniform(g););
}

static double normal(struct generator *g) {
  double u1 = uniform(g), u2 = uniform(g);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

int curandGenerateNormal(struct generator *g, float *out, size_t n, float mean, float std) {
  GENERATE(float, buf[i] = (float)(mean + std * normal(g)););
}

int curandGenerateNormalDouble(struct generator *g, double *out, size_t n, double mean, double std) {
  GENERATE(double, buf[i] = mean + std * normal(g););
}

int curandGenerateLogNormal(struct generator *g, float *out, size_t n, float mean, float std) {
  GENERATE(float, buf[i] = (float)exp(mean + std * normal(g)););
}

int curandGenerateLogNormalDouble(struct generator *g, double *out, size_t n, double mean, double std) {
  GENERATE(double, buf[i] = exp(mean + std * normal(g)););
}

int curandGenerate(struct generator *g, unsigned int *out, size_t n) {
  GENERATE(unsigned int, buf[i] = (unsigned int)(next(g) >> 32););
}
