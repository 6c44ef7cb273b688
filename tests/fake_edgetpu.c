/* A stand-in for libedgetpu, built by the tests and the simulated-Edge-TPU bench (gcc).
 *
 * THIS IS A SIMULATION. It exports the two entry points `load_delegate` looks for, so loading,
 * option passing and failure run through the interpreter's real external-delegate path. It never
 * computes the model: it exists to measure orchestration (several devices, hand-offs, failures),
 * never accuracy.
 *
 * Two modes:
 *   - pass-through (default): the delegate claims no ops and the CPU runs the graph;
 *   - timed device (option "sim_invoke_ms" or FAKE_EDGETPU_INVOKE_MS set): the delegate claims the
 *     whole graph; each invoke sleeps that many ms (so the host CPU is free, as with a real TPU)
 *     and writes a deterministic output: output byte j = the non-constant input byte at
 *     j * input_bytes / output_bytes (a function of the input, so tile order is visible).
 *
 * Options (delegate key/value pairs) and their environment fallbacks:
 *   device             device spec ("usb:0"); must be listed in FAKE_EDGETPU_DEVICES (default usb:0)
 *   sim_invoke_ms      FAKE_EDGETPU_INVOKE_MS    ms per invoke (timed mode)
 *   sim_fail_after     FAKE_EDGETPU_FAIL_AFTER   invokes before this device fails every invoke
 *                      FAKE_EDGETPU_FAIL_DEVICE  which device the env fail_after applies to
 *   FAKE_EDGETPU_LOG          file to append one line per create call: "create device=usb:0 k=v ..."
 *   FAKE_EDGETPU_FAIL_FIRST   fail while the log holds fewer create lines than this (re-enumeration)
 *
 * The TFLite structs below follow tensorflow/lite/core/c/common.h (C ABI; fields only appended).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  int size;
  int data[];
} TfLiteIntArray;

typedef struct {
  int type;
  void *data;
  TfLiteIntArray *dims;
  float scale;
  int32_t zero_point;
  int allocation_type; /* 1 kTfLiteMmapRo, 2 kTfLiteArenaRw, 5 kTfLitePersistentRo, ... */
  size_t bytes;
  const void *allocation;
  const char *name;
  struct TfLiteDelegate *delegate;
  int buffer_handle;
  _Bool data_is_stale;
  _Bool is_variable;
  int quantization_type;
  void *quantization_params;
  void *sparsity;
  const TfLiteIntArray *dims_signature;
} TfLiteTensor; /* 112 bytes on LP64: context->tensors is an array of these */

struct TfLiteDelegate;
struct TfLiteContext;

typedef struct {
  TfLiteIntArray *inputs;
  TfLiteIntArray *outputs;
  TfLiteIntArray *intermediates;
  TfLiteIntArray *temporaries;
  void *user_data;
  /* further fields unused here */
} TfLiteNode;

typedef struct {
  void *(*init)(struct TfLiteContext *context, const char *buffer, size_t length);
  void (*free)(struct TfLiteContext *context, void *buffer);
  int (*prepare)(struct TfLiteContext *context, TfLiteNode *node);
  int (*invoke)(struct TfLiteContext *context, TfLiteNode *node);
  void *profiling_string;
  int32_t builtin_code;
  const char *custom_name;
  int version;
  void *registration_external;
  void *async_kernel;
  uint64_t inplace_operator;
  void *reserved[8]; /* zeros: room for fields a newer interpreter reads from a by-value copy */
} TfLiteRegistration;

typedef struct TfLiteContext {
  size_t tensors_size;
  int (*GetExecutionPlan)(struct TfLiteContext *context, TfLiteIntArray **execution_plan);
  TfLiteTensor *tensors;
  void *impl_;
  void *ResizeTensor;
  void (*ReportError)(struct TfLiteContext *context, const char *msg, ...);
  void *AddTensors;
  void *GetNodeAndRegistration;
  int (*ReplaceNodeSubsetsWithDelegateKernels)(struct TfLiteContext *context,
                                               TfLiteRegistration registration,
                                               const TfLiteIntArray *nodes_to_replace,
                                               struct TfLiteDelegate *delegate);
  /* further fields unused here */
} TfLiteContext;

typedef struct TfLiteDelegate {
  void *data_;
  int (*Prepare)(TfLiteContext *context, struct TfLiteDelegate *delegate);
  void *CopyFromBufferHandle;
  void *CopyToBufferHandle;
  void *FreeBufferHandle;
  int64_t flags;
  void *opaque_delegate_builder;
} TfLiteDelegate;

typedef struct {
  TfLiteDelegate *delegate;
  TfLiteIntArray *nodes_to_replace;
  TfLiteIntArray *input_tensors;
  TfLiteIntArray *output_tensors;
} TfLiteDelegateParams;

/* One simulated device: its spec, timing and failure plan. */
typedef struct {
  TfLiteDelegate base; /* first, so a TfLiteDelegate* is a SimDevice* */
  char device[64];
  double invoke_ms; /* < 0: pass-through mode */
  long fail_after;  /* < 0: never fails */
  long invokes;
} SimDevice;

typedef struct {
  SimDevice *dev;
  int input;
  int outputs[16];
  int n_outputs;
} SimKernel;

static int log_lines(const char *path) {
  FILE *f = fopen(path, "r");
  int n = 0, c;
  if (!f) return 0;
  while ((c = fgetc(f)) != EOF)
    if (c == '\n') n++;
  fclose(f);
  return n;
}

static int device_exists(const char *device) {
  const char *list = getenv("FAKE_EDGETPU_DEVICES");
  char buf[256];
  if (!device) return 1;
  if (!list) list = "usb:0";
  snprintf(buf, sizeof buf, ",%s,", list);
  char want[64];
  snprintf(want, sizeof want, ",%s,", device);
  return strstr(buf, want) != NULL;
}

static int prepare_nothing(TfLiteContext *context, TfLiteDelegate *delegate) {
  (void)context;
  (void)delegate;
  return 0; /* kTfLiteOk: no nodes replaced, the CPU runs the graph */
}

static void *kernel_init(TfLiteContext *context, const char *buffer, size_t length) {
  (void)length;
  const TfLiteDelegateParams *p = (const TfLiteDelegateParams *)buffer;
  SimKernel *k = calloc(1, sizeof *k);
  k->dev = (SimDevice *)p->delegate;
  k->input = -1;
  for (int i = 0; i < p->input_tensors->size; i++) {
    int t = p->input_tensors->data[i];
    int alloc = context->tensors[t].allocation_type;
    if (alloc != 1 && alloc != 5) { /* not a constant (weights): the graph's input */
      k->input = t;
      break;
    }
  }
  for (int i = 0; i < p->output_tensors->size && k->n_outputs < 16; i++)
    k->outputs[k->n_outputs++] = p->output_tensors->data[i];
  return k;
}

static void kernel_free(TfLiteContext *context, void *buffer) {
  (void)context;
  free(buffer);
}

static int kernel_prepare(TfLiteContext *context, TfLiteNode *node) {
  (void)context;
  (void)node;
  return 0;
}

static void sleep_ms(double ms) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  long long ns = (long long)t.tv_sec * 1000000000LL + t.tv_nsec + (long long)(ms * 1e6);
  t.tv_sec = ns / 1000000000LL;
  t.tv_nsec = ns % 1000000000LL;
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) != 0) {
  }
}

static int kernel_invoke(TfLiteContext *context, TfLiteNode *node) {
  SimKernel *k = (SimKernel *)node->user_data;
  SimDevice *d = k->dev;
  d->invokes++;
  if (d->fail_after >= 0 && d->invokes > d->fail_after) {
    context->ReportError(context, "fake edgetpu %s: simulated device failure", d->device);
    return 1; /* kTfLiteError */
  }
  sleep_ms(d->invoke_ms);
  const TfLiteTensor *in = k->input >= 0 ? &context->tensors[k->input] : NULL;
  const uint8_t *src = in ? (const uint8_t *)in->data : NULL;
  size_t n_in = in ? in->bytes : 0;
  for (int o = 0; o < k->n_outputs; o++) {
    TfLiteTensor *out = &context->tensors[k->outputs[o]];
    uint8_t *dst = (uint8_t *)out->data;
    for (size_t j = 0; j < out->bytes; j++)
      dst[j] = n_in ? src[(size_t)((unsigned long long)j * n_in / out->bytes)] : (uint8_t)j;
  }
  return 0;
}

static int prepare_whole_graph(TfLiteContext *context, TfLiteDelegate *delegate) {
  TfLiteIntArray *plan = NULL;
  if (context->GetExecutionPlan(context, &plan) != 0) return 1;
  TfLiteRegistration r;
  memset(&r, 0, sizeof r);
  r.init = kernel_init;
  r.free = kernel_free;
  r.prepare = kernel_prepare;
  r.invoke = kernel_invoke;
  r.builtin_code = 51; /* kTfLiteBuiltinDelegate */
  r.custom_name = "FakeEdgeTpuSimulation";
  r.version = 1;
  return context->ReplaceNodeSubsetsWithDelegateKernels(context, r, plan, delegate);
}

static const char *option(char **keys, char **values, size_t n, const char *key,
                          const char *env) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(keys[i], key) == 0) return values[i];
  return env ? getenv(env) : NULL;
}

TfLiteDelegate *tflite_plugin_create_delegate(char **keys, char **values, size_t n,
                                              void (*report_error)(const char *)) {
  const char *log_path = getenv("FAKE_EDGETPU_LOG");
  const char *fail_first = getenv("FAKE_EDGETPU_FAIL_FIRST");
  const char *device = option(keys, values, n, "device", NULL);
  int earlier = log_path ? log_lines(log_path) : 0;
  if (log_path) {
    FILE *f = fopen(log_path, "a");
    if (f) {
      fprintf(f, "create");
      for (size_t i = 0; i < n; i++) fprintf(f, " %s=%s", keys[i], values[i]);
      fprintf(f, "\n");
      fclose(f);
    }
  }
  if (fail_first && earlier < atoi(fail_first)) {
    if (report_error) report_error("fake edgetpu: device re-enumerating");
    return NULL;
  }
  if (!device_exists(device)) {
    if (report_error) report_error("fake edgetpu: no such device");
    return NULL;
  }
  SimDevice *d = calloc(1, sizeof *d);
  snprintf(d->device, sizeof d->device, "%s", device ? device : "any");
  const char *ms = option(keys, values, n, "sim_invoke_ms", "FAKE_EDGETPU_INVOKE_MS");
  d->invoke_ms = ms && *ms ? atof(ms) : -1.0;
  const char *fail = option(keys, values, n, "sim_fail_after", NULL);
  const char *fail_dev = getenv("FAKE_EDGETPU_FAIL_DEVICE");
  if (!fail && (!fail_dev || strcmp(fail_dev, d->device) == 0))
    fail = getenv("FAKE_EDGETPU_FAIL_AFTER");
  d->fail_after = fail && *fail ? atol(fail) : -1;
  d->base.data_ = d;
  d->base.Prepare = d->invoke_ms < 0 ? prepare_nothing : prepare_whole_graph;
  return &d->base;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate *delegate) { free(delegate); }
