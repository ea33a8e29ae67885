/* Tests tools/curand-stub.c without a GPU: this program stands in for the driver
 * (cuMemcpyHtoDAsync_v2 copies to a host buffer, cuStreamSynchronize checks the stream) and
 * checks what candle relies on: create, seed, set stream, uniform and normal numbers of the
 * right range and moments, the same sequence for the same seed, destroy. tools/gpu-bundle
 * runs it; exit status 0 when everything holds. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int curandCreateGenerator(void **g, int type);
int curandDestroyGenerator(void *g);
int curandSetPseudoRandomGeneratorSeed(void *g, unsigned long long seed);
int curandSetStream(void *g, void *stream);
int curandGenerateUniform(void *g, float *out, size_t n);
int curandGenerateUniformDouble(void *g, double *out, size_t n);
int curandGenerateNormal(void *g, float *out, size_t n, float mean, float std);
int curandGenerateNormalDouble(void *g, double *out, size_t n, double mean, double std);

static void *const STREAM = (void *)0x5eed;
static int copies, bad_stream;

int cuMemcpyHtoDAsync_v2(unsigned long long dst, const void *src, size_t bytes, void *stream) {
  memcpy((void *)(size_t)dst, src, bytes);
  copies++;
  bad_stream |= stream != STREAM;
  return 0;
}

int cuStreamSynchronize(void *stream) {
  bad_stream |= stream != STREAM;
  return 0;
}

static int fails;
#define CHECK(c, ...) do { if (!(c)) { fails++; printf("curand stand-in test FAILED: " __VA_ARGS__); printf("\n"); } } while (0)

int main(void) {
  enum { N = 200000 };
  void *g = NULL;
  CHECK(curandCreateGenerator(&g, 100) == 0 && g, "create");
  CHECK(curandSetPseudoRandomGeneratorSeed(g, 299792458ULL) == 0, "seed");
  CHECK(curandSetStream(g, STREAM) == 0, "stream");
  float *f = malloc(N * sizeof *f);
  double *d = malloc(N * sizeof *d);
  CHECK(curandGenerateUniform(g, f, N) == 0, "uniform");
  double m = 0, v = 0;
  int out_of_range = 0;
  for (int i = 0; i < N; i++) { m += f[i]; out_of_range += !(f[i] > 0.0f && f[i] <= 1.0f); }
  m /= N;
  for (int i = 0; i < N; i++) v += (f[i] - m) * (f[i] - m);
  v /= N;
  CHECK(!out_of_range, "%d uniform values outside (0, 1]", out_of_range);
  CHECK(fabs(m - 0.5) < 0.005 && fabs(v - 1.0 / 12) < 0.002, "uniform mean %f var %f", m, v);
  CHECK(curandGenerateNormal(g, f, N, 1.0f, 2.0f) == 0, "normal");
  m = v = 0;
  for (int i = 0; i < N; i++) m += f[i];
  m /= N;
  for (int i = 0; i < N; i++) v += (f[i] - m) * (f[i] - m);
  v /= N;
  CHECK(fabs(m - 1.0) < 0.03 && fabs(sqrt(v) - 2.0) < 0.03, "normal mean %f std %f", m, sqrt(v));
  CHECK(curandGenerateNormalDouble(g, d, N, 0.0, 1.0) == 0, "normal double");
  CHECK(curandGenerateUniformDouble(g, d, 7) == 0 && d[0] > 0 && d[0] <= 1, "uniform double");
  CHECK(curandGenerateNormal(g, f, 0, 0.0f, 1.0f) == 0, "zero elements");
  /* the same seed gives the same numbers */
  float a[5], b[5];
  curandSetPseudoRandomGeneratorSeed(g, 7);
  curandGenerateUniform(g, a, 5);
  curandSetPseudoRandomGeneratorSeed(g, 7);
  curandGenerateUniform(g, b, 5);
  CHECK(!memcmp(a, b, sizeof a), "same seed, different numbers");
  CHECK(copies == 7 && !bad_stream, "%d copies, stream %s", copies, bad_stream ? "wrong" : "right");
  CHECK(curandDestroyGenerator(g) == 0, "destroy");
  if (!fails) printf("curand stand-in: ok (uniform, normal, seeds, stream)\n");
  return fails != 0;
}
