/* A stand-in for libedgetpu, built by the tests: an external TFLite delegate that claims no ops.
 *
 * It exports the two entry points `load_delegate` looks for, so loading, option passing and failure
 * run through the interpreter's real external-delegate path. Behaviour, from the environment:
 *   FAKE_EDGETPU_LOG          file to append one line per create call: "create device=usb:0 k=v ..."
 *   FAKE_EDGETPU_DEVICES      comma-separated device specs that "exist" (default "usb:0")
 *   FAKE_EDGETPU_FAIL_FIRST   fail while the log holds fewer create lines than this (re-enumeration)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct TfLiteDelegate {
  void *data_;
  int (*Prepare)(void *context, struct TfLiteDelegate *delegate);
  void *CopyFromBufferHandle;
  void *CopyToBufferHandle;
  void *FreeBufferHandle;
  int64_t flags;
  void *opaque_delegate_builder;
} TfLiteDelegate;

static int prepare_nothing(void *context, TfLiteDelegate *delegate) {
  (void)context;
  (void)delegate;
  return 0; /* kTfLiteOk: no nodes replaced, the CPU runs the graph */
}

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

TfLiteDelegate *tflite_plugin_create_delegate(char **keys, char **values, size_t n,
                                              void (*report_error)(const char *)) {
  const char *log_path = getenv("FAKE_EDGETPU_LOG");
  const char *fail_first = getenv("FAKE_EDGETPU_FAIL_FIRST");
  const char *device = NULL;
  int earlier = log_path ? log_lines(log_path) : 0;
  for (size_t i = 0; i < n; i++)
    if (strcmp(keys[i], "device") == 0) device = values[i];
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
  TfLiteDelegate *d = calloc(1, sizeof *d);
  d->Prepare = prepare_nothing;
  return d;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate *delegate) { free(delegate); }
