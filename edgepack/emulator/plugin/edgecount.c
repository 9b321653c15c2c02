/*
 * edgecount: a QEMU TCG plugin that counts guest instructions inside a region of interest.
 *
 * The guest marks the region with two otherwise unused syscalls, 0x4ED0 (begin) and
 * 0x4ED1 (end); they fail with ENOSYS and change nothing else. Every translated block
 * adds its instruction count to one counter (an inline add, so the overhead is small);
 * the region's count is the counter's change between the markers, summed over regions.
 *
 * Usage: qemu-aarch64 -plugin libedgecount.so,out=FILE ...
 * At exit FILE holds one JSON object: {"roi_insns": N, "regions": R, "open": 0|1, "total_insns": T}.
 *
 * The add is not atomic: count with one guest thread busy at a time (one inference thread).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define ROI_BEGIN 0x4ED0
#define ROI_END 0x4ED1

static uint64_t insns;        /* every guest instruction executed so far */
static uint64_t roi_insns;    /* instructions inside closed regions */
static uint64_t roi_start;    /* value of insns at the open region's begin marker */
static uint64_t regions;      /* number of closed regions */
static int roi_open;
static char *out_path;

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    (void)id; (void)vcpu; (void)a1; (void)a2; (void)a3; (void)a4; (void)a5; (void)a6; (void)a7; (void)a8;
    if (num == ROI_BEGIN) {
        roi_start = insns;
        roi_open = 1;
    } else if (num == ROI_END && roi_open) {
        roi_insns += insns - roi_start;
        regions++;
        roi_open = 0;
    }
}

static void at_exit(qemu_plugin_id_t id, void *data)
{
    (void)id; (void)data;
    FILE *fh = fopen(out_path, "w");
    if (fh == NULL) {
        return;
    }
    fprintf(fh, "{\"roi_insns\": %" PRIu64 ", \"regions\": %" PRIu64 ", \"open\": %d, \"total_insns\": %" PRIu64 "}\n",
            roi_insns, regions, roi_open, insns);
    fclose(fh);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            out_path = strdup(argv[i] + 4);
        }
    }
    if (out_path == NULL) {
        fprintf(stderr, "edgecount: give out=FILE\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
