/* The seccomp trap reporter and per-thread filter loader (see seccomp.py).
 *
 * A forbidden syscall under SECCOMP_RET_TRAP is not executed; the kernel sends SIGSYS to
 * the calling thread with the syscall number in siginfo. This handler, plain C because a
 * Python handler would only run later on the main thread, writes one line
 *     seccomp: <kind> thread <tid> made forbidden syscall <name> (<nr>)\n
 * to a descriptor opened before the jail was entered (a file in the jail's directory,
 * outside its root, that the node reads after the process is gone), then ends the whole
 * process with exit_group(148), Firecracker's exit code for a seccomp violation.
 * Only async-signal-safe calls: write and exit_group, no allocation, no stdio.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_NR 512
#define EXIT_CODE 148

static int report_fd = -1;
static char names[MAX_NR][24];
/* initial-exec: no lazy TLS allocation (malloc) when first touched inside the handler */
static __thread __attribute__((tls_model("initial-exec"))) char thread_kind[16] = "inherited";

static size_t put(char *buf, size_t at, const char *s) {
    while (*s && at < 255) buf[at++] = *s++;
    return at;
}

static size_t put_num(char *buf, size_t at, long v) {
    char tmp[24];
    int n = 0;
    unsigned long u = v < 0 ? -(unsigned long)v : (unsigned long)v;
    do { tmp[n++] = '0' + u % 10; u /= 10; } while (u && n < 23);
    if (v < 0 && at < 255) buf[at++] = '-';
    while (n && at < 255) buf[at++] = tmp[--n];
    return at;
}

static void on_sigsys(int sig, siginfo_t *info, void *ctx) {
    (void)sig; (void)ctx;
    char line[256];
    size_t n = 0;
    int nr = info->si_syscall;
    n = put(line, n, "seccomp: ");
    n = put(line, n, thread_kind);
    n = put(line, n, " thread ");
    n = put_num(line, n, (long)syscall(SYS_gettid));
    n = put(line, n, " made forbidden syscall ");
    n = put(line, n, (nr >= 0 && nr < MAX_NR && names[nr][0]) ? names[nr] : "?");
    n = put(line, n, " (");
    n = put_num(line, n, nr);
    n = put(line, n, ")\n");
    if (report_fd >= 0) {
        ssize_t r = write(report_fd, line, n);
        (void)r;
    }
    ssize_t r = write(2, line, n);
    (void)r;
    syscall(SYS_exit_group, EXIT_CODE);
}

/* arm(fd, names): remember where to report and the syscall names; install the handler. */
static PyObject *arm(PyObject *self, PyObject *args) {
    int fd;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "iO", &fd, &seq)) return NULL;
    PyObject *fast = PySequence_Fast(seq, "names must be a sequence");
    if (!fast) return NULL;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    for (Py_ssize_t i = 0; i < len && i < MAX_NR; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(fast, i);
        const char *s = PyUnicode_Check(o) ? PyUnicode_AsUTF8(o) : NULL;
        if (s) { strncpy(names[i], s, sizeof names[i] - 1); names[i][sizeof names[i] - 1] = 0; }
        else { PyErr_Clear(); names[i][0] = 0; }
    }
    Py_DECREF(fast);
    report_fd = fd;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigfillset(&sa.sa_mask);     /* nothing else runs on this thread inside the handler */
    if (sigaction(SIGSYS, &sa, NULL) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* load(bpf, kind): NO_NEW_PRIVS, then the filter on the calling thread only (no TSYNC). */
static PyObject *load(PyObject *self, PyObject *args) {
    Py_buffer buf;
    const char *kind;
    if (!PyArg_ParseTuple(args, "y*s", &buf, &kind)) return NULL;
    if (buf.len == 0 || buf.len % sizeof(struct sock_filter) != 0) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "not a BPF program");
        return NULL;
    }
    struct sock_fprog prog = {
        .len = (unsigned short)(buf.len / sizeof(struct sock_filter)),
        .filter = (struct sock_filter *)buf.buf,
    };
    int rc = prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (rc == 0) rc = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
    PyBuffer_Release(&buf);
    if (rc != 0) return PyErr_SetFromErrno(PyExc_OSError);
    strncpy(thread_kind, kind, sizeof thread_kind - 1);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"arm", arm, METH_VARARGS, "arm(fd, names): report seccomp traps to fd, then exit 148"},
    {"load", load, METH_VARARGS, "load(bpf, kind): install a BPF filter on this thread"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sigsys", NULL, -1, methods};

PyMODINIT_FUNC PyInit__sigsys(void) {
    PyObject *m = PyModule_Create(&module);
    if (m) PyModule_AddIntConstant(m, "EXIT_CODE", EXIT_CODE);
    return m;
}
