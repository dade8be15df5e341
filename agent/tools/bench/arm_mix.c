/*
 * facelite: guest instructions executed, in total and by class, for `make bench-arm` (qemu-user TCG plugin).
 *
 * The total is what qemu's own tests/plugin/insn.c counts with inline=on (the bench cross-checks the two on one
 * model); the classes tell which kernels ran: sdot/udot only exist where the CPU has the dot-product extension,
 * smull/smlal/sadalp are the int8 kernels without it, fmla the fp32 ones, fmla_h the float16 ones (only where the
 * CPU has ARMv8.2 FP16 arithmetic), ld/st the memory traffic.
 * Counters are inline adds (no callback per instruction) and not atomic: run the guest with one compute thread.
 *
 *   gcc -shared -fPIC -O2 -I<qemu>/include/qemu $(pkg-config --cflags glib-2.0) -o libfacelite_mix.so arm_mix.c
 *   qemu-aarch64 -cpu cortex-a72 -plugin ./libfacelite_mix.so -d plugin -D counts.txt PROGRAM
 *
 * Output (at exit): "total insns: N", then "total insns class NAME: N" for every class.
 *
 * Marks: the guest asks for the running total with a syscall no program makes otherwise, lseek(-1, MARK_MAGIC,
 * TAG) (Python: os.lseek(-1, 0xFACE0000, tag), which fails with EBADF), and the plugin prints "mark TAG: N"
 * and "mark TAG class NAME: N". Two marks in one process give the instructions between them (no start-up, no exit).
 */
#include <glib.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

/*
 * Mnemonic prefixes per class, first match wins; none matched: "other". exact: the whole mnemonic; vector: only
 * with vector operands ("smull v0.8h, ..." is an int8 kernel, "smull x0, w1, w2" is address arithmetic).
 */
enum { PREFIX = 0, EXACT = 1, VECTOR = 2 };
static const struct {
    const char *name;
    int match;
    const char *prefixes[12];
} CLASSES[] = {
    {"dot", VECTOR, {"sdot", "udot", "usdot", "sudot", NULL}}, /* also by encoding: see by_encoding */
    {"i8mm", VECTOR, {"smmla", "ummla", "usmmla", NULL}},
    {"fmla_h", VECTOR, {NULL}}, /* by encoding only: see by_encoding */
    {"widening_mul", VECTOR, {"smull", "umull", "smlal", "umlal", "sadalp", "uadalp", "smlsl", "umlsl", NULL}},
    {"fmla", PREFIX, {"fmla", "fmls", "fmadd", "fmsub", "fnmadd", "fnmsub", NULL}},
    {"fp_other", PREFIX, {"fadd", "fmul", "fmax", "fmin", "fsub", "fdiv", "fcvt", "scvtf", "ucvtf", "frint", NULL}},
    {"prefetch", PREFIX, {"prfm", "prfum", NULL}},
    {"load", PREFIX, {"ld", NULL}},
    {"store", PREFIX, {"st", NULL}},
    {"branch", EXACT, {"b", "bl", "br", "blr", "ret", "cbz", "cbnz", "tbz", "tbnz", NULL}},
    {"undecoded", PREFIX, {".byte", NULL}}, /* the disassembler does not know it */
};
enum { DOT = 0, I8MM = 1, FMLA_H = 2 };
#define N_CLASSES (sizeof(CLASSES) / sizeof(CLASSES[0]))

static uint64_t total;
static uint64_t per_class[N_CLASSES + 1]; /* the last one is "other" */

#define SYS_LSEEK_AARCH64 62
#define MARK_MAGIC 0xFACE0000ULL

static void print_counts(const char *prefix)
{
    g_autoptr(GString) out = g_string_new(NULL);
    g_string_append_printf(out, "%s: %" PRIu64 "\n", prefix, total);
    for (size_t c = 0; c <= N_CLASSES; c++) {
        g_string_append_printf(out, "%s class %s: %" PRIu64 "\n", prefix, c < N_CLASSES ? CLASSES[c].name : "other",
                               per_class[c]);
    }
    qemu_plugin_outs(out->str);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2, uint64_t a3,
                       uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (num == SYS_LSEEK_AARCH64 && a1 == (uint64_t)-1 && a2 == MARK_MAGIC) {
        g_autofree char *prefix = g_strdup_printf("mark %" PRIu64, a3);
        print_counts(prefix);
    }
}

static size_t classify(const char *disas)
{
    size_t len = strcspn(disas, " \t."); /* the mnemonic: "b.ne x" -> "b" */
    const char *operands = disas + strcspn(disas, " \t");
    operands += strspn(operands, " \t");
    for (size_t c = 0; c < N_CLASSES; c++) {
        if (CLASSES[c].match == VECTOR && operands[0] != 'v') {
            continue;
        }
        for (size_t p = 0; CLASSES[c].prefixes[p]; p++) {
            size_t plen = strlen(CLASSES[c].prefixes[p]);
            if ((CLASSES[c].match == EXACT ? len == plen : len >= plen) && !strncmp(disas, CLASSES[c].prefixes[p], plen)) {
                return c;
            }
        }
    }
    return N_CLASSES;
}

/*
 * The disassembler in Debian's qemu 7.2 (capstone 4) prints the ARMv8.2+ dot-product and matrix-multiply
 * instructions as ".byte ...": recognise those by their encoding (Arm ARM: SDOT/UDOT vector and by element,
 * SMMLA/UMMLA/USMMLA), and the float16 vector FMLA/FMLS (three same FP16, and by element with size 00), whose
 * disassembly would not tell them from the fp32 ones.
 */
static int by_encoding(uint32_t w)
{
    if ((w & 0x9FE0FC00) == 0x0E809400 || (w & 0x9FC0F400) == 0x0F80E000) {
        return DOT;
    }
    if ((w & 0xDFE0F400) == 0x4E80A400) {
        return I8MM;
    }
    if ((w & 0xBF60FC00) == 0x0E400C00 || (w & 0xBFC0B400) == 0x0F001000) {
        return FMLA_H;
    }
    return -1;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint32_t word = 0;
        if (qemu_plugin_insn_size(insn) == sizeof(word)) {
            memcpy(&word, qemu_plugin_insn_data(insn), sizeof(word));
        }
        int known = by_encoding(word);
        size_t c = N_CLASSES;
        if (known >= 0) {
            c = (size_t)known;
        } else {
            char *disas = qemu_plugin_insn_disas(insn);
            c = disas ? classify(disas) : N_CLASSES;
            g_free(disas);
        }
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &total, 1);
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &per_class[c], 1);
    }
}

static void plugin_exit(qemu_plugin_id_t id, void *p)
{
    print_counts("total insns");
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
    return 0;
}
