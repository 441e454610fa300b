/*
 * Fake libnvidia-ml.so.1 for the gpufleet test bed (no GPU on the machine).
 *
 * Implements the NVML entry points nvidia-ml-py (pynvml) calls for gpufleet.vllm.gpu_facts, with the real
 * signatures and struct layouts, so pynvml's own code runs unchanged. The GPUs come from the JSON file named in
 * env GPUFLEET_FAKE_GPUS, read at every nvmlInit (format: sim/nvml/README.md). Built by sim/nvml/build.sh.
 *
 * Copyright (c) gpufleet maintainers
 * GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

static const struct {
    const char *name;
    int code;
    const char *text;
} ERRORS[] = {
    {"SUCCESS", 0, "Success"},
    {"UNINITIALIZED", 1, "Uninitialized"},
    {"INVALID_ARGUMENT", 2, "Invalid Argument"},
    {"NOT_SUPPORTED", 3, "Not Supported"},
    {"NO_PERMISSION", 4, "Insufficient Permissions"},
    {"ALREADY_INITIALIZED", 5, "Already Initialized"},
    {"NOT_FOUND", 6, "Not Found"},
    {"INSUFFICIENT_SIZE", 7, "Insufficient Size"},
    {"INSUFFICIENT_POWER", 8, "Insufficient External Power"},
    {"DRIVER_NOT_LOADED", 9, "Driver Not Loaded"},
    {"TIMEOUT", 10, "Timeout"},
    {"IRQ_ISSUE", 11, "Interrupt Request Issue"},
    {"LIBRARY_NOT_FOUND", 12, "NVML Shared Library Not Found"},
    {"FUNCTION_NOT_FOUND", 13, "Function Not Found"},
    {"CORRUPTED_INFOROM", 14, "Corrupted infoROM"},
    {"GPU_IS_LOST", 15, "GPU is lost"},
    {"RESET_REQUIRED", 16, "GPU requires restart"},
    {"OPERATING_SYSTEM", 17, "The operating system has blocked the request."},
    {"LIB_RM_VERSION_MISMATCH", 18, "RM has detected an NVML/RM version mismatch."},
    {"IN_USE", 19, "In use by another client"},
    {"MEMORY", 20, "Insufficient Memory"},
    {"NO_DATA", 21, "No data"},
    {"ARGUMENT_VERSION_MISMATCH", 25, "Argument version mismatch"},
    {"UNKNOWN", 999, "Unknown Error"},
};
#define N_ERRORS (sizeof(ERRORS) / sizeof(ERRORS[0]))

/* ------------------------------------------------------------------ a small JSON reader */

enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct jv {
    int type;
    double num;
    char *str;
    int len;
    struct jv **items;
    char **keys;
} jv;

typedef struct {
    const char *p;
    const char *err;
} jparser;

static void jfree(jv *v) {
    if (!v) return;
    for (int i = 0; i < v->len; i++) {
        jfree(v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->str);
    free(v);
}

static void jskip(jparser *ps) {
    while (*ps->p && isspace((unsigned char)*ps->p)) ps->p++;
}

static jv *jparse_value(jparser *ps, int depth);

static char *jparse_string(jparser *ps) {
    /* ps->p at the opening quote */
    size_t cap = 32, n = 0;
    char *out = malloc(cap);
    ps->p++;
    while (*ps->p && *ps->p != '"') {
        unsigned c = (unsigned char)*ps->p++;
        if (c == '\\') {
            char e = *ps->p++;
            switch (e) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                unsigned cp = 0;
                for (int i = 0; i < 4; i++) {
                    char h = *ps->p++;
                    cp <<= 4;
                    if (h >= '0' && h <= '9') cp |= (unsigned)(h - '0');
                    else if (h >= 'a' && h <= 'f') cp |= (unsigned)(h - 'a' + 10);
                    else if (h >= 'A' && h <= 'F') cp |= (unsigned)(h - 'A' + 10);
                    else { ps->err = "bad \\u escape"; free(out); return NULL; }
                }
                c = cp < 0x80 ? cp : '?'; /* names and UUIDs are ASCII */
                break;
            }
            case 0: ps->err = "unterminated string"; free(out); return NULL;
            default: c = (unsigned char)e;
            }
        }
        if (n + 2 > cap) out = realloc(out, cap *= 2);
        out[n++] = (char)c;
    }
    if (*ps->p != '"') { ps->err = "unterminated string"; free(out); return NULL; }
    ps->p++;
    out[n] = 0;
    return out;
}

static jv *jnew(int type) {
    jv *v = calloc(1, sizeof(jv));
    v->type = type;
    return v;
}

static void jpush(jv *v, char *key, jv *item) {
    v->items = realloc(v->items, sizeof(jv *) * (size_t)(v->len + 1));
    if (v->type == J_OBJ) {
        v->keys = realloc(v->keys, sizeof(char *) * (size_t)(v->len + 1));
        v->keys[v->len] = key;
    }
    v->items[v->len++] = item;
}

static jv *jparse_value(jparser *ps, int depth) {
    if (depth > 32) { ps->err = "nested too deep"; return NULL; }
    jskip(ps);
    char c = *ps->p;
    if (c == '{' || c == '[') {
        int obj = c == '{';
        jv *v = jnew(obj ? J_OBJ : J_ARR);
        ps->p++;
        jskip(ps);
        if (*ps->p == (obj ? '}' : ']')) { ps->p++; return v; }
        for (;;) {
            char *key = NULL;
            if (obj) {
                jskip(ps);
                if (*ps->p != '"') { ps->err = "expected a key"; jfree(v); return NULL; }
                key = jparse_string(ps);
                if (!key) { jfree(v); return NULL; }
                jskip(ps);
                if (*ps->p != ':') { ps->err = "expected ':'"; free(key); jfree(v); return NULL; }
                ps->p++;
            }
            jv *item = jparse_value(ps, depth + 1);
            if (!item) { free(key); jfree(v); return NULL; }
            jpush(v, key, item);
            jskip(ps);
            if (*ps->p == ',') { ps->p++; continue; }
            if (*ps->p == (obj ? '}' : ']')) { ps->p++; return v; }
            ps->err = obj ? "expected ',' or '}'" : "expected ',' or ']'";
            jfree(v);
            return NULL;
        }
    }
    if (c == '"') {
        char *s = jparse_string(ps);
        if (!s) return NULL;
        jv *v = jnew(J_STR);
        v->str = s;
        return v;
    }
    if (!strncmp(ps->p, "true", 4)) { ps->p += 4; jv *v = jnew(J_BOOL); v->num = 1; return v; }
    if (!strncmp(ps->p, "false", 5)) { ps->p += 5; return jnew(J_BOOL); }
    if (!strncmp(ps->p, "null", 4)) { ps->p += 4; return jnew(J_NULL); }
    if (c == '-' || (c >= '0' && c <= '9')) {
        char *end;
        double d = strtod(ps->p, &end);
        if (end == ps->p) { ps->err = "bad number"; return NULL; }
        ps->p = end;
        jv *v = jnew(J_NUM);
        v->num = d;
        return v;
    }
    ps->err = "unexpected character";
    return NULL;
}

static jv *jget(const jv *obj, const char *key) {
    if (!obj || obj->type != J_OBJ) return NULL;
    for (int i = 0; i < obj->len; i++)
        if (!strcmp(obj->keys[i], key)) return obj->items[i];
    return NULL;
}

/* ------------------------------------------------------------------ the configured GPUs */

enum {
    F_NAME, F_UUID, F_MEMORY, F_TEMPERATURE, F_UTILIZATION, F_POWER_DRAW, F_POWER_LIMIT,
    F_COMPUTE_CAPABILITY, F_PCI, F_MIG, F_PROCESSES, F_ECC, F_RETIRED, N_FIELDS
};

/* JSON field names (as in gpu_facts) → the NVML query that serves them; several names share a query. */
static const struct {
    const char *key;
    int field;
} FIELD_KEYS[] = {
    {"name", F_NAME},
    {"uuid", F_UUID},
    {"memory", F_MEMORY},
    {"memory_total_mib", F_MEMORY},
    {"memory_used_mib", F_MEMORY},
    {"memory_free_mib", F_MEMORY},
    {"temperature_c", F_TEMPERATURE},
    {"utilization", F_UTILIZATION},
    {"utilization_gpu_pct", F_UTILIZATION},
    {"utilization_memory_pct", F_UTILIZATION},
    {"power_draw_w", F_POWER_DRAW},
    {"power_limit_w", F_POWER_LIMIT},
    {"compute_capability", F_COMPUTE_CAPABILITY},
    {"pci_bus_id", F_PCI},
    {"mig_mode", F_MIG},
    {"processes", F_PROCESSES},
    {"ecc_errors_uncorrected", F_ECC},
    {"retired_pages_pending", F_RETIRED},
};
#define N_FIELD_KEYS (sizeof(FIELD_KEYS) / sizeof(FIELD_KEYS[0]))

#define MAX_XIDS 64

typedef struct {
    unsigned pid;
    unsigned long long used_bytes; /* ~0ULL: not available */
    char name[64];
} fake_proc;

typedef struct {
    int index;
    char name[96];
    char uuid[96];
    char pci_bus_id[32];
    unsigned long long mem_total, mem_used, mem_reserved; /* bytes */
    unsigned temperature, util_gpu, util_mem;
    unsigned power_mw, power_limit_mw;
    int cc_major, cc_minor;
    unsigned mig_current, mig_pending;
    unsigned long long ecc_uncorrected; /* volatile uncorrected ECC errors since the last driver load */
    unsigned retired_pending;           /* pages waiting to be retired at the next reset */
    fake_proc *procs;
    int nprocs;
    int err[N_FIELDS]; /* NVML error returned for a query, 0 = answers */
    unsigned long long xids[MAX_XIDS]; /* the Xid errors the driver raised (xid_errors), in order */
    int n_xids;
} fake_gpu;

static fake_gpu *gpus;
static int n_gpus;
static int init_count;
static char driver_version[80] = "550.54.15";
static char nvml_version[80] = "12.550.54.15";
static int cuda_version = 12040;

static int error_code(const jv *v) {
    if (!v || v->type == J_NULL) return 0;
    if (v->type == J_NUM) return (int)v->num;
    if (v->type == J_BOOL) return v->num ? NVML_ERROR_NOT_SUPPORTED : 0;
    if (v->type != J_STR) return NVML_ERROR_UNKNOWN;
    const char *s = v->str;
    if (!strncmp(s, "NVML_ERROR_", 11)) s += 11;
    for (size_t i = 0; i < N_ERRORS; i++)
        if (!strcasecmp(ERRORS[i].name, s)) return ERRORS[i].code;
    return NVML_ERROR_UNKNOWN;
}

static int field_of(const char *key) {
    for (size_t i = 0; i < N_FIELD_KEYS; i++)
        if (!strcmp(FIELD_KEYS[i].key, key)) return FIELD_KEYS[i].field;
    return -1;
}

static double num_or(const jv *v, double dflt) { return v && v->type == J_NUM ? v->num : dflt; }

static void str_or(char *dst, size_t size, const jv *v, const char *dflt) {
    const char *src = v && v->type == J_STR ? v->str : dflt;
    size_t n = strlen(src);
    if (n >= size) n = size - 1; /* truncated, like a too-long name in a fixed NVML buffer */
    memcpy(dst, src, n);
    dst[n] = 0;
}

/* A key present with value null means: this device does not support the query. */
static void null_means_unsupported(fake_gpu *g, const jv *obj, const char *key) {
    const jv *v = jget(obj, key);
    if (v && v->type == J_NULL) g->err[field_of(key)] = NVML_ERROR_NOT_SUPPORTED;
}

static void free_gpus(void) {
    for (int i = 0; i < n_gpus; i++) free(gpus[i].procs);
    free(gpus);
    gpus = NULL;
    n_gpus = 0;
}

static void load_xids(fake_gpu *g, const jv *o) {
    const jv *xids = jget(o, "xid_errors");
    g->n_xids = 0;
    for (int i = 0; xids && xids->type == J_ARR && i < xids->len && g->n_xids < MAX_XIDS; i++)
        if (xids->items[i]->type == J_NUM) g->xids[g->n_xids++] = (unsigned long long)xids->items[i]->num;
}

static void load_gpu(fake_gpu *g, int index, const jv *o) {
    memset(g, 0, sizeof(*g));
    g->index = index;
    str_or(g->name, sizeof g->name, jget(o, "name"), "NVIDIA A100-SXM4-80GB");
    char dflt[96];
    snprintf(dflt, sizeof dflt, "GPU-00000000-0000-4000-8000-%012x", index);
    str_or(g->uuid, sizeof g->uuid, jget(o, "uuid"), dflt);
    snprintf(dflt, sizeof dflt, "00000000:%02X:00.0", 0x07 + index * 8);
    str_or(g->pci_bus_id, sizeof g->pci_bus_id, jget(o, "pci_bus_id"), dflt);
    const unsigned long long MiB = 1024ULL * 1024ULL;
    g->mem_total = (unsigned long long)num_or(jget(o, "memory_total_mib"), 81920) * MiB;
    g->mem_reserved = (unsigned long long)num_or(jget(o, "memory_reserved_mib"), 0) * MiB;
    const jv *procs = jget(o, "processes");
    double proc_sum = 0;
    if (procs && procs->type == J_ARR) {
        g->procs = calloc((size_t)procs->len + 1, sizeof(fake_proc));
        for (int i = 0; i < procs->len; i++) {
            const jv *p = procs->items[i];
            fake_proc *fp = &g->procs[g->nprocs++];
            fp->pid = (unsigned)num_or(jget(p, "pid"), 1000 + i);
            const jv *used = jget(p, "used_memory_mib");
            fp->used_bytes = used && used->type == J_NUM ? (unsigned long long)used->num * MiB : ~0ULL;
            if (used && used->type == J_NUM) proc_sum += used->num;
            str_or(fp->name, sizeof fp->name, jget(p, "name"), "python3");
        }
    }
    g->mem_used = (unsigned long long)num_or(jget(o, "memory_used_mib"), proc_sum) * MiB;
    if (g->mem_used + g->mem_reserved > g->mem_total) g->mem_used = g->mem_total - g->mem_reserved;
    g->temperature = (unsigned)num_or(jget(o, "temperature_c"), 35);
    g->ecc_uncorrected = (unsigned long long)num_or(jget(o, "ecc_errors_uncorrected"), 0);
    const jv *retired = jget(o, "retired_pages_pending");
    g->retired_pending = retired && retired->type == J_BOOL && retired->num;
    g->util_gpu = (unsigned)num_or(jget(o, "utilization_gpu_pct"), 0);
    g->util_mem = (unsigned)num_or(jget(o, "utilization_memory_pct"), 0);
    g->power_mw = (unsigned)(num_or(jget(o, "power_draw_w"), 60) * 1000 + 0.5);
    g->power_limit_mw = (unsigned)(num_or(jget(o, "power_limit_w"), 400) * 1000 + 0.5);
    const jv *cc = jget(o, "compute_capability");
    g->cc_major = 8;
    g->cc_minor = 0;
    if (cc && cc->type == J_STR) sscanf(cc->str, "%d.%d", &g->cc_major, &g->cc_minor);
    else if (cc && cc->type == J_NUM) {
        g->cc_major = (int)cc->num;
        g->cc_minor = (int)((cc->num - g->cc_major) * 10 + 0.5);
    }
    /* mig_mode: absent → "not supported" (the GPU has no MIG), like most GPUs; true/false → enabled/disabled */
    const jv *mig = jget(o, "mig_mode");
    if (!mig || mig->type == J_NULL) g->err[F_MIG] = NVML_ERROR_NOT_SUPPORTED;
    else g->mig_current = g->mig_pending = (mig->type == J_BOOL && mig->num) ||
                                           (mig->type == J_STR && !strcasecmp(mig->str, "enabled"));
    static const char *nullable[] = {"name", "memory_total_mib", "temperature_c", "utilization_gpu_pct",
                                     "power_draw_w", "power_limit_w", "compute_capability", "pci_bus_id",
                                     "processes"};
    for (size_t i = 0; i < sizeof nullable / sizeof nullable[0]; i++) null_means_unsupported(g, o, nullable[i]);
    const jv *ns = jget(o, "not_supported");
    for (int i = 0; ns && ns->type == J_ARR && i < ns->len; i++) {
        int f = ns->items[i]->type == J_STR ? field_of(ns->items[i]->str) : -1;
        if (f >= 0) g->err[f] = NVML_ERROR_NOT_SUPPORTED;
        else fprintf(stderr, "fake NVML: unknown field in not_supported of GPU %d\n", index);
    }
    const jv *errs = jget(o, "errors");
    for (int i = 0; errs && errs->type == J_OBJ && i < errs->len; i++) {
        int f = field_of(errs->keys[i]);
        if (f >= 0) g->err[f] = error_code(errs->items[i]);
        else fprintf(stderr, "fake NVML: unknown field '%s' in errors of GPU %d\n", errs->keys[i], index);
    }
    load_xids(g, o);
    if (jget(o, "lost") && jget(o, "lost")->type == J_BOOL && jget(o, "lost")->num)
        for (int f = F_MEMORY; f < N_FIELDS; f++) g->err[f] = NVML_ERROR_GPU_IS_LOST;
}

/* The configuration file as JSON (an object), or NULL after saying why on stderr. */
static jv *parse_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fake NVML: cannot read GPUFLEET_FAKE_GPUS=%s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (n + 1 >= cap) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    buf[n] = 0;
    jparser ps = {buf, NULL};
    jv *root = jparse_value(&ps, 0);
    if (root) {
        jskip(&ps);
        if (*ps.p) { ps.err = "trailing characters"; jfree(root); root = NULL; }
    }
    if (!root || root->type != J_OBJ) {
        fprintf(stderr, "fake NVML: %s: invalid JSON (%s at byte %ld)\n", path, ps.err ? ps.err : "not an object",
                (long)(ps.p - buf));
        jfree(root);
        free(buf);
        return NULL;
    }
    free(buf);
    return root;
}

/* Reads the configuration; returns the nvmlInit result. */
static jv *parse_file(const char *path);

static nvmlReturn_t load_config(void) {
    const char *path = getenv("GPUFLEET_FAKE_GPUS");
    free_gpus();
    if (!path || !*path) return NVML_ERROR_DRIVER_NOT_LOADED; /* a library without a driver behind it */
    jv *root = parse_file(path);
    if (!root) return NVML_ERROR_UNKNOWN;
    nvmlReturn_t ret = (nvmlReturn_t)error_code(jget(root, "init_error"));
    str_or(driver_version, sizeof driver_version, jget(root, "driver_version"), "550.54.15");
    char dflt[96];
    snprintf(dflt, sizeof dflt, "12.%s", driver_version);
    str_or(nvml_version, sizeof nvml_version, jget(root, "nvml_version"), dflt);
    const jv *cuda = jget(root, "cuda_version");
    cuda_version = 12040;
    if (cuda && cuda->type == J_NUM) cuda_version = (int)cuda->num;
    if (cuda && cuda->type == J_STR) {
        int major = 0, minor = 0;
        sscanf(cuda->str, "%d.%d", &major, &minor);
        cuda_version = major * 1000 + minor * 10;
    }
    const jv *list = jget(root, "gpus");
    if (ret == NVML_SUCCESS && list && list->type == J_ARR) {
        gpus = calloc((size_t)list->len + 1, sizeof(fake_gpu));
        for (int i = 0; i < list->len; i++) load_gpu(&gpus[i], i, list->items[i]);
        n_gpus = list->len;
    }
    jfree(root);
    return ret;
}

#define NEED_INIT()                                     \
    do {                                                \
        if (init_count <= 0) return NVML_ERROR_UNINITIALIZED; \
    } while (0)

static fake_gpu *gpu_of(void *handle) {
    fake_gpu *g = handle;
    if (!gpus || g < gpus || g >= gpus + n_gpus) return NULL;
    return g;
}

#define DEVICE(h, field)                                        \
    fake_gpu *g = gpu_of(h);                                    \
    if (init_count <= 0) return NVML_ERROR_UNINITIALIZED;       \
    if (!g) return NVML_ERROR_INVALID_ARGUMENT;                 \
    if ((field) >= 0 && g->err[(field)]) return g->err[(field)]

static nvmlReturn_t copy_str(char *dst, unsigned size, const char *src) {
    if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > size) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ NVML API */

const char *nvmlErrorString(nvmlReturn_t result) {
    for (size_t i = 0; i < N_ERRORS; i++)
        if (ERRORS[i].code == result) return ERRORS[i].text;
    return "Unknown Error";
}

nvmlReturn_t nvmlInitWithFlags(unsigned flags) {
    (void)flags;
    if (init_count > 0) { init_count++; return NVML_SUCCESS; }
    nvmlReturn_t ret = load_config();
    if (ret == NVML_SUCCESS) init_count = 1;
    else free_gpus();
    return ret;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    NEED_INIT();
    if (--init_count == 0) free_gpus();
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned length) {
    NEED_INIT();
    return copy_str(version, length, driver_version);
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned length) {
    NEED_INIT();
    return copy_str(version, length, nvml_version);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
    if (!v) return NVML_ERROR_INVALID_ARGUMENT;
    *v = cuda_version; /* like the real one: answers without nvmlInit */
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) { return nvmlSystemGetCudaDriverVersion(v); }

nvmlReturn_t nvmlSystemGetProcessName(unsigned pid, char *name, unsigned length) {
    NEED_INIT();
    for (int i = 0; i < n_gpus; i++)
        for (int j = 0; j < gpus[i].nprocs; j++)
            if (gpus[i].procs[j].pid == pid) return copy_str(name, length, gpus[i].procs[j].name);
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned *count) {
    NEED_INIT();
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned)n_gpus;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount(unsigned *count) { return nvmlDeviceGetCount_v2(count); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned index, void **device) {
    NEED_INIT();
    if (!device || index >= (unsigned)n_gpus) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &gpus[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned index, void **device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, void **device) {
    NEED_INIT();
    if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < n_gpus; i++)
        if (!strcmp(gpus[i].uuid, uuid)) { *device = &gpus[i]; return NVML_SUCCESS; }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *bus_id, void **device) {
    NEED_INIT();
    if (!bus_id || !device) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < n_gpus; i++)
        if (!strcasecmp(gpus[i].pci_bus_id, bus_id)) { *device = &gpus[i]; return NVML_SUCCESS; }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetIndex(void *device, unsigned *index) {
    DEVICE(device, -1);
    if (!index) return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned)g->index;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMinorNumber(void *device, unsigned *minor) {
    DEVICE(device, -1);
    if (!minor) return NVML_ERROR_INVALID_ARGUMENT;
    *minor = (unsigned)g->index;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(void *device, char *name, unsigned length) {
    DEVICE(device, F_NAME);
    return copy_str(name, length, g->name);
}

nvmlReturn_t nvmlDeviceGetUUID(void *device, char *uuid, unsigned length) {
    DEVICE(device, F_UUID);
    return copy_str(uuid, length, g->uuid);
}

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

#define NVML_MEMORY_V2 ((unsigned)(sizeof(nvmlMemory_v2_t) | (2u << 24)))

nvmlReturn_t nvmlDeviceGetMemoryInfo(void *device, nvmlMemory_t *m) {
    DEVICE(device, F_MEMORY);
    if (!m) return NVML_ERROR_INVALID_ARGUMENT;
    /* v1 counts the driver-reserved memory as used, like the real one */
    m->total = g->mem_total;
    m->used = g->mem_used + g->mem_reserved;
    m->free = g->mem_total - m->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(void *device, nvmlMemory_v2_t *m) {
    DEVICE(device, F_MEMORY);
    if (!m) return NVML_ERROR_INVALID_ARGUMENT;
    if (m->version != NVML_MEMORY_V2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    m->total = g->mem_total;
    m->reserved = g->mem_reserved;
    m->used = g->mem_used;
    m->free = g->mem_total - g->mem_reserved - g->mem_used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(void *device, int sensor, unsigned *temp) {
    DEVICE(device, F_TEMPERATURE);
    if (!temp || sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    *temp = g->temperature;
    return NVML_SUCCESS;
}

typedef struct {
    unsigned gpu, memory;
} nvmlUtilization_t;

nvmlReturn_t nvmlDeviceGetUtilizationRates(void *device, nvmlUtilization_t *u) {
    DEVICE(device, F_UTILIZATION);
    if (!u) return NVML_ERROR_INVALID_ARGUMENT;
    u->gpu = g->util_gpu;
    u->memory = g->util_mem;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(void *device, unsigned *mw) {
    DEVICE(device, F_POWER_DRAW);
    if (!mw) return NVML_ERROR_INVALID_ARGUMENT;
    *mw = g->power_mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(void *device, unsigned *mw) {
    DEVICE(device, F_POWER_LIMIT);
    if (!mw) return NVML_ERROR_INVALID_ARGUMENT;
    *mw = g->power_limit_mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerManagementLimit(void *device, unsigned *mw) {
    return nvmlDeviceGetEnforcedPowerLimit(device, mw);
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(void *device, int *major, int *minor) {
    DEVICE(device, F_COMPUTE_CAPABILITY);
    if (!major || !minor) return NVML_ERROR_INVALID_ARGUMENT;
    *major = g->cc_major;
    *minor = g->cc_minor;
    return NVML_SUCCESS;
}

typedef struct {
    char busIdLegacy[16];
    unsigned domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

nvmlReturn_t nvmlDeviceGetPciInfo_v3(void *device, nvmlPciInfo_t *pci) {
    DEVICE(device, F_PCI);
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    memset(pci, 0, sizeof(*pci));
    unsigned dom = 0, bus = 0, dev = 0, fn = 0;
    sscanf(g->pci_bus_id, "%x:%x:%x.%x", &dom, &bus, &dev, &fn);
    pci->domain = dom;
    pci->bus = bus;
    pci->device = dev;
    pci->pciDeviceId = 0x20B210DE;
    pci->pciSubSystemId = 0x147F10DE;
    memcpy(pci->busId, g->pci_bus_id, sizeof pci->busId - 1);
    const char *legacy = g->pci_bus_id + (strlen(g->pci_bus_id) > 12 ? 4 : 0);
    memcpy(pci->busIdLegacy, legacy, strnlen(legacy, sizeof pci->busIdLegacy - 1));
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPciInfo_v2(void *device, nvmlPciInfo_t *pci) { return nvmlDeviceGetPciInfo_v3(device, pci); }
nvmlReturn_t nvmlDeviceGetPciInfo(void *device, nvmlPciInfo_t *pci) { return nvmlDeviceGetPciInfo_v3(device, pci); }

/* errorType 1 = NVML_MEMORY_ERROR_TYPE_UNCORRECTED, counterType 0 = NVML_VOLATILE_ECC: the one counter served */
nvmlReturn_t nvmlDeviceGetTotalEccErrors(void *device, int errorType, int counterType, unsigned long long *count) {
    DEVICE(device, F_ECC);
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = errorType == 1 && counterType == 0 ? g->ecc_uncorrected : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(void *device, unsigned *isPending) {
    DEVICE(device, F_RETIRED);
    if (!isPending) return NVML_ERROR_INVALID_ARGUMENT;
    *isPending = g->retired_pending;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigMode(void *device, unsigned *current, unsigned *pending) {
    DEVICE(device, F_MIG);
    if (!current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
    *current = g->mig_current;
    *pending = g->mig_pending;
    return NVML_SUCCESS;
}

typedef struct {
    unsigned pid;
    unsigned long long usedGpuMemory;
    unsigned gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t; /* v2 and v3 share this layout */

static nvmlReturn_t running_processes(void *device, unsigned *count, nvmlProcessInfo_t *infos) {
    DEVICE(device, F_PROCESSES);
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned have = (unsigned)g->nprocs;
    if (*count < have || (!infos && have)) {
        *count = have;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *count = have;
    for (unsigned i = 0; i < have; i++) {
        infos[i].pid = g->procs[i].pid;
        infos[i].usedGpuMemory = g->procs[i].used_bytes;
        infos[i].gpuInstanceId = 0xFFFFFFFFu;
        infos[i].computeInstanceId = 0xFFFFFFFFu;
    }
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(void *d, unsigned *c, nvmlProcessInfo_t *p) {
    return running_processes(d, c, p);
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(void *d, unsigned *c, nvmlProcessInfo_t *p) {
    return running_processes(d, c, p);
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(void *d, unsigned *c, nvmlProcessInfo_t *p) {
    return running_processes(d, c, p);
}

nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(void *device, unsigned *count, nvmlProcessInfo_t *infos) {
    DEVICE(device, F_PROCESSES);
    (void)infos;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = 0;
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ events (Xid errors) */

#define NVML_EVENT_TYPE_XID_CRITICAL_ERROR 0x8ULL
#define SUPPORTED_EVENTS (0x1ULL | 0x2ULL | 0x4ULL | NVML_EVENT_TYPE_XID_CRITICAL_ERROR) /* ECC SBE/DBE, P-state, Xid */

typedef struct {
    void *device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned gpuInstanceId;
    unsigned computeInstanceId;
} nvmlEventData_t;

/* An event set: which GPUs registered for Xid events and how many of their xid_errors it delivered so far. */
typedef struct {
    int registered[256];
    int delivered[256];
} fake_event_set;

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(void *device, unsigned long long *eventTypes) {
    DEVICE(device, -1);
    if (!eventTypes) return NVML_ERROR_INVALID_ARGUMENT;
    *eventTypes = SUPPORTED_EVENTS;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetCreate(void **set) {
    NEED_INIT();
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    *set = calloc(1, sizeof(fake_event_set));
    return *set ? NVML_SUCCESS : NVML_ERROR_MEMORY;
}

nvmlReturn_t nvmlDeviceRegisterEvents(void *device, unsigned long long eventTypes, void *set) {
    DEVICE(device, -1);
    if (!set || g->index >= 256) return NVML_ERROR_INVALID_ARGUMENT;
    if (eventTypes & ~SUPPORTED_EVENTS) return NVML_ERROR_NOT_SUPPORTED;
    if (g->err[F_MEMORY] == NVML_ERROR_GPU_IS_LOST) return NVML_ERROR_GPU_IS_LOST;
    if (eventTypes & NVML_EVENT_TYPE_XID_CRITICAL_ERROR) ((fake_event_set *)set)->registered[g->index] = 1;
    return NVML_SUCCESS;
}

/* The Xid lists as the file says now: a test appends to a GPU's xid_errors while the agent waits. */
static void reload_xids(void) {
    const char *path = getenv("GPUFLEET_FAKE_GPUS");
    jv *root = path && *path ? parse_file(path) : NULL;
    const jv *list = root ? jget(root, "gpus") : NULL;
    for (int i = 0; list && list->type == J_ARR && i < list->len && i < n_gpus; i++) load_xids(&gpus[i], list->items[i]);
    jfree(root);
}

static int next_event(fake_event_set *es, nvmlEventData_t *data) {
    for (int i = 0; i < n_gpus && i < 256; i++) {
        if (es->registered[i] && es->delivered[i] < gpus[i].n_xids) {
            data->device = &gpus[i];
            data->eventType = NVML_EVENT_TYPE_XID_CRITICAL_ERROR;
            data->eventData = gpus[i].xids[es->delivered[i]++];
            data->gpuInstanceId = data->computeInstanceId = 0xFFFFFFFFu;
            return 1;
        }
    }
    return 0;
}

/* Each xid_errors entry of a registered GPU is delivered once, in order (those in the file when the set was created
   too: the file lists what the driver raises); with none left, waits up to timeoutms (re-reading the file every
   20 ms) and answers NVML_ERROR_TIMEOUT like the real call. */
nvmlReturn_t nvmlEventSetWait_v2(void *set, nvmlEventData_t *data, unsigned timeoutms) {
    NEED_INIT();
    if (!set || !data) return NVML_ERROR_INVALID_ARGUMENT;
    fake_event_set *es = set;
    for (unsigned waited = 0;; waited += 20) {
        reload_xids();
        if (next_event(es, data)) return NVML_SUCCESS;
        if (waited >= timeoutms) return NVML_ERROR_TIMEOUT;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

nvmlReturn_t nvmlEventSetWait(void *set, nvmlEventData_t *data, unsigned timeoutms) {
    return nvmlEventSetWait_v2(set, data, timeoutms);
}

nvmlReturn_t nvmlEventSetFree(void *set) {
    NEED_INIT();
    free(set);
    return NVML_SUCCESS;
}
