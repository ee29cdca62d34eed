/* Instruction counter for qemu user-mode emulation (a TCG plugin), used by
 * `hwcomp bench --count-instructions`.
 *
 * Counts every guest instruction executed, per translation block, with an inline add
 * (no callback per block). The guest marks the region to count with two system calls
 * that fail harmlessly: close(MARK_START) and close(MARK_STOP) (negative descriptors; the
 * bundle runner and hwcomp's onnxruntime script make them around their timed runs), so
 * start-up (Python, loading libraries, the first run) stays out. A region may be marked
 * several times; the counts add up. At exit it writes to the file named by `out=`:
 *
 *     # total <instructions of the whole program>
 *     # marked <regions marked>
 *     <block address, hex> <instructions executed there inside the regions>
 *     ...
 *
 * so the caller can attribute instructions to the functions of a library whose load
 * address it knows. The counts are deterministic for a single-threaded guest; concurrent
 * guest threads add to shared counters without atomics and can lose counts.
 *
 * Marks by address (system emulation, where a firmware makes no system calls): each
 * `mark=<hex address>` argument (up to 1024) names a function entry; every time a block
 * starting there runs, the plugin notes which mark and how many instructions the whole
 * program had executed by then (that block included), and writes the notes after the
 * counts, in order:
 *
 *     @ <mark index, in the order of the arguments> <instructions so far>
 *
 * so the caller can take differences: the Cortex-M build marks hwcomp_call, hwcomp_step_end
 * and each kernel's entry to count each kernel call of the firmware's run.
 *
 * qemu 7.2's plugin API (version 1). qemu does not ship its plugin header in Debian, so
 * the few declarations used are written here: the opaque types, three enums whose first
 * value is the one used, and the functions, as qemu exports them to plugins.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
typedef struct {
  const char *target_name;
  struct {
    int min;
    int cur;
  } version;
  bool system_emulation;
} qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index,
                                              int64_t num, uint64_t a1, uint64_t a2, uint64_t a3,
                                              uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7,
                                              uint64_t a8);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);

EXPORT int qemu_plugin_version = 1;

/* One per translated block. Blocks live in chunks that never move: qemu holds the
 * counter's address in the generated code. */
typedef struct {
  uint64_t vaddr;
  uint64_t executed; /* instructions: the block's length added per execution */
  uint64_t at_start; /* `executed` when the current region started */
  uint64_t marked;   /* instructions inside finished regions */
} Block;

/* The marks: close() of these descriptors (the low 32 bits of the argument register). */
enum { MARK_START = -48770001, MARK_STOP = -48770002 };

enum { CHUNK = 1 << 16, MAX_CHUNKS = 1 << 12 };
static Block *chunks[MAX_CHUNKS];
static size_t used; /* blocks handed out, over all chunks */
static Block overflow; /* shared by blocks past the last chunk (address 0) */
static char out_path[4096];
static int64_t close_number = -1; /* the guest's close() system call number */
static int in_region;
static uint64_t regions;

enum { MAX_MARKS = 1024, MAX_EVENTS = 1 << 20 };
static uint64_t marks[MAX_MARKS];
static int n_marks;
typedef struct {
  uint32_t mark;
  uint64_t so_far;
} Event;
static Event *events;
static size_t n_events;

static Block *block_at(size_t i) { return &chunks[i / CHUNK][i % CHUNK]; }

static Block *new_block(uint64_t vaddr) {
  size_t chunk = used / CHUNK;
  if (chunk >= MAX_CHUNKS) return &overflow;
  if (chunks[chunk] == NULL) {
    chunks[chunk] = calloc(CHUNK, sizeof(Block));
    if (chunks[chunk] == NULL) return &overflow;
  }
  Block *block = &chunks[chunk][used % CHUNK];
  used++;
  block->vaddr = vaddr;
  return block;
}

static uint64_t executed_so_far(void) {
  uint64_t total = overflow.executed;
  for (size_t i = 0; i < used; i++) total += block_at(i)->executed;
  return total;
}

static void on_mark(unsigned int vcpu_index, void *userdata) {
  (void)vcpu_index;
  if (n_events < MAX_EVENTS) {
    events[n_events].mark = (uint32_t)(uintptr_t)userdata;
    events[n_events].so_far = executed_so_far();
    n_events++;
  }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  /* Called with qemu's translation lock held: no locking of our own. */
  uint64_t vaddr = qemu_plugin_tb_vaddr(tb);
  Block *block = new_block(vaddr);
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &block->executed,
                                           qemu_plugin_tb_n_insns(tb));
  /* Registered after the count: a mark's note includes its own block. */
  for (int m = 0; m < n_marks; m++) {
    if (marks[m] == vaddr) {
      qemu_plugin_register_vcpu_tb_exec_cb(tb, on_mark, QEMU_PLUGIN_CB_NO_REGS,
                                           (void *)(uintptr_t)m);
    }
  }
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8) {
  (void)id, (void)vcpu_index, (void)a2, (void)a3, (void)a4, (void)a5, (void)a6, (void)a7, (void)a8;
  if (num != close_number) return;
  int32_t fd = (int32_t)(uint32_t)a1;
  if (fd == MARK_START && !in_region) {
    for (size_t i = 0; i <= used; i++) {
      Block *block = i < used ? block_at(i) : &overflow;
      block->at_start = block->executed;
    }
    in_region = 1;
  } else if (fd == MARK_STOP && in_region) {
    for (size_t i = 0; i <= used; i++) {
      Block *block = i < used ? block_at(i) : &overflow;
      block->marked += block->executed - block->at_start;
    }
    in_region = 0;
    regions++;
  }
}

static void write_counts(qemu_plugin_id_t id, void *userdata) {
  (void)id;
  (void)userdata;
  FILE *out = fopen(out_path, "w");
  if (out == NULL) {
    qemu_plugin_outs("hwcomp insn_count: cannot write the out= file\n");
    return;
  }
  uint64_t total = executed_so_far();
  fprintf(out, "# total %llu\n# marked %llu\n", (unsigned long long)total,
          (unsigned long long)regions);
  for (size_t i = 0; i < used; i++) {
    const Block *block = block_at(i);
    if (block->marked)
      fprintf(out, "%llx %llu\n", (unsigned long long)block->vaddr,
              (unsigned long long)block->marked);
  }
  if (overflow.marked) fprintf(out, "0 %llu\n", (unsigned long long)overflow.marked);
  for (size_t i = 0; i < n_events; i++)
    fprintf(out, "@ %u %llu\n", events[i].mark, (unsigned long long)events[i].so_far);
  fclose(out);
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
  for (int i = 0; i < argc; i++) {
    if (strncmp(argv[i], "out=", 4) == 0) {
      strncpy(out_path, argv[i] + 4, sizeof(out_path) - 1);
    } else if (strncmp(argv[i], "mark=", 5) == 0 && n_marks < MAX_MARKS) {
      marks[n_marks++] = strtoull(argv[i] + 5, NULL, 16);
    }
  }
  if (n_marks > 0) {
    events = calloc(MAX_EVENTS, sizeof(Event));
    if (events == NULL) return -1;
  }
  if (out_path[0] == '\0') {
    qemu_plugin_outs("hwcomp insn_count: needs out=PATH\n");
    return -1;
  }
  /* close() in each guest's system call table (Linux's asm-generic numbering on aarch64). */
  if (strcmp(info->target_name, "aarch64") == 0) close_number = 57;
  else if (strcmp(info->target_name, "x86_64") == 0) close_number = 3;
  else if (strcmp(info->target_name, "arm") == 0) close_number = 6;
  qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, write_counts, NULL);
  return 0;
}
