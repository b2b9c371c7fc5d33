// SPDX-License-Identifier: GPL-2.0
/*
 * nodesvc in-guest test agent, compiled into the guest kernel (init/nodesvc_agent.c).
 *
 * Guest user space cannot run on the nested-KVM dev/CI hosts, so the checks a test
 * program would do run here, in the kernel, against the real Linux drivers and
 * network stack. Dormant unless `nodesvc_agent.checks=a,b,...` is on the command
 * line; then it runs from a late_initcall_sync (after ip= auto-configuration, before
 * /init), prints one result line per check on the console
 *
 *     AGENT <check> OK <detail>        or        AGENT <check> FAIL <detail>
 *
 * then `AGENT DONE`, and restarts the VM (with reboot=k: i8042 reset, the VMM exits).
 * Other `AGENT` lines (START, `<check> READY ...`) are progress, not results.
 * Every wait is bounded; a watchdog ends the run after nodesvc_agent.deadline seconds.
 * Parameters: the PARAM list below, documented in guest/README.md.
 */
#include <linux/bvec.h>
#include <linux/crc32.h>
#include <linux/delay.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/in.h>
#include <linux/inet.h>
#include <linux/init.h>
#include <linux/init_syscalls.h>
#include <linux/io.h>
#include <linux/ktime.h>
#include <linux/moduleparam.h>
#include <linux/net.h>
#include <linux/reboot.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/timer.h>
#include <linux/uio.h>
#include <linux/vm_sockets.h>
#include <net/af_vsock.h>
#include <net/net_namespace.h>
#include <net/sock.h>
#include <uapi/linux/mount.h>

#define DEV_DIR "/agentdev"		/* our own devtmpfs mount: no user space made /dev */
#define MNT_DIR "/agentmnt"
#define CHUNK (64 * 1024)
#define BOOT_TIMER_ADDR 0xC0000000UL	/* Firecracker's boot-timer device */
#define BOOT_TIMER_MAGIC 123

/* nodesvc_agent.<name>=<value> on the kernel command line (module_param of built-in code) */
#define PARAM(ctype, name, ptype, init) static ctype name = init; module_param(name, ptype, 0)
PARAM(char *, checks, charp, NULL);		/* comma-separated check names, run in order */
PARAM(uint, timeout, uint, 10);			/* seconds, per network wait */
PARAM(uint, deadline, uint, 180);		/* seconds, the whole run (watchdog) */
PARAM(char *, read_dev, charp, "vda");		/* blk-read */
PARAM(ulong, read_size, ulong, 0);		/* 0: the whole device */
PARAM(char *, write_dev, charp, "vdb");		/* blk-write */
PARAM(ulong, write_off, ulong, 0);
PARAM(uint, write_len, uint, 4096);
PARAM(char *, pattern, charp, "nodesvc-agent");	/* repeated to write_len bytes */
PARAM(char *, ext4_dev, charp, "vdc");		/* ext4 */
PARAM(char *, ext4_file, charp, "hello.txt");
PARAM(char *, throttle_dev, charp, "vdd");	/* blk-throttle */
PARAM(ulong, throttle_bytes, ulong, 2 << 20);	/* timed, after */
PARAM(ulong, throttle_warmup, ulong, 0);	/* ... these untimed bytes */
PARAM(uint, throttle_chunk, uint, CHUNK);
PARAM(char *, host, charp, NULL);		/* udp, tcp: the host's IPv4 address */
PARAM(ushort, udp_port, ushort, 0);
PARAM(ushort, tcp_port, ushort, 0);
PARAM(uint, vsock_port, uint, 0);		/* vsock-connect: to CID 2 (the host) */
PARAM(uint, listen_port, uint, 0);		/* vsock-listen */
PARAM(uint, rng_bytes, uint, 64);
PARAM(uint, ping_wait, uint, 5);		/* seconds */
PARAM(char *, mmds_addr, charp, "169.254.169.254");	/* mmds: the V2 flow over TCP */
PARAM(char *, mmds_path, charp, "/latest/meta-data/agent-check");
PARAM(char *, mmds_expect, charp, NULL);	/* the body the GET must return (NULL: any) */
PARAM(uint, mmds_ttl, uint, 60);		/* X-metadata-token-ttl-seconds */
PARAM(uint, go_port, uint, 0);			/* wait-go: vsock port the host connects to */
PARAM(uint, go_wait, uint, 300);		/* seconds */

static char detail[160];
static const char *current_check = "start";

/* Sets the result line's <detail>; returns `rc` (0: OK, otherwise FAIL). */
static __printf(2, 3) int __init result(int rc, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vscnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	return rc;
}
#define ok(...) result(0, __VA_ARGS__)
#define fail(...) result(-1, __VA_ARGS__)

static const char *__init dev_path(const char *dev, char *buf, size_t len)
{
	if (dev[0] == '/')
		return dev;
	snprintf(buf, len, DEV_DIR "/%s", dev);
	return buf;
}

/* Read `path` (up to `limit` bytes, 0: to its end): bytes read and zlib's crc32. */
static int __init read_crc(const char *path, loff_t limit, loff_t *size, u32 *crc)
{
	struct file *f = filp_open(path, O_RDONLY | O_LARGEFILE, 0);
	loff_t pos = 0, end;
	ssize_t n = 0;
	void *buf;

	if (IS_ERR(f))
		return PTR_ERR(f);
	/* f_mapping->host: for a block device node, the bdev inode that has the size */
	end = limit ?: i_size_read(f->f_mapping->host);
	buf = kmalloc(CHUNK, GFP_KERNEL);
	*crc = ~0U;
	while (buf && pos < end) {
		n = kernel_read(f, buf, min_t(loff_t, CHUNK, end - pos), &pos);
		if (n <= 0)
			break;
		*crc = crc32_le(*crc, buf, n);
	}
	*crc ^= ~0U;
	*size = pos;
	kfree(buf);
	fput(f);
	return !buf ? -ENOMEM : n < 0 ? n : pos < end ? -EIO : 0;
}

/* --- checks: one function each; 0 = OK, otherwise FAIL; `detail` says why ---------- */

static int __init check_blk_read(void)
{
	char path[64];
	loff_t size;
	u32 crc;
	int err = read_crc(dev_path(read_dev, path, sizeof(path)), read_size, &size, &crc);

	if (err)
		return fail("dev=%s err=%d", read_dev, err);
	return ok("dev=%s size=%lld crc32=%08x", read_dev, size, crc);
}

static int __init check_blk_write(void)
{
	char path[64];
	size_t plen = strlen(pattern);
	loff_t pos = write_off;
	struct file *f;
	ssize_t n;
	char *buf;
	int err;
	uint i;

	if (!plen || !write_len)
		return fail("empty pattern or write_len=0");
	f = filp_open(dev_path(write_dev, path, sizeof(path)), O_RDWR | O_LARGEFILE, 0);
	if (IS_ERR(f))
		return fail("dev=%s open err=%ld", write_dev, PTR_ERR(f));
	buf = kmalloc(write_len, GFP_KERNEL);
	for (i = 0; buf && i < write_len; i++)
		buf[i] = pattern[i % plen];
	n = buf ? kernel_write(f, buf, write_len, &pos) : -ENOMEM;
	err = n == write_len ? vfs_fsync(f, 0) : 0;
	kfree(buf);
	fput(f);
	if (n != write_len)
		return fail("dev=%s write=%zd", write_dev, n);
	if (err)
		return fail("dev=%s fsync err=%d", write_dev, err);
	return ok("dev=%s offset=%lu len=%u", write_dev, write_off, write_len);
}

static int __init check_ext4(void)
{
	char dev[64], file[128];
	loff_t size;
	u32 crc;
	int err;

	init_mkdir(MNT_DIR, 0755);
	err = init_mount(dev_path(ext4_dev, dev, sizeof(dev)), MNT_DIR, "ext4", MS_RDONLY, NULL);
	if (err)
		return fail("mount %s err=%d", ext4_dev, err);
	snprintf(file, sizeof(file), MNT_DIR "/%s", ext4_file);
	err = read_crc(file, 0, &size, &crc);
	init_umount(MNT_DIR, 0);
	if (err)
		return fail("file=%s err=%d", ext4_file, err);
	return ok("file=%s size=%lld crc32=%08x", ext4_file, size, crc);
}

/*
 * O_DIRECT reads (no page cache, no readahead), so the device's rate limiter sets the pace.
 * The first throttle_warmup bytes are not timed: they drain what the bucket holds.
 */
static int __init check_blk_throttle(void)
{
	loff_t pos = 0, end = throttle_warmup + throttle_bytes, stop;
	uint order = get_order(throttle_chunk);
	struct iov_iter it;
	struct bio_vec bv;
	struct page *pages;
	struct file *f;
	char path[64];
	ssize_t n = 0;
	u64 t0 = 0, ns;

	if (!throttle_chunk || throttle_chunk % 512 || throttle_warmup % 512)
		return fail("throttle_chunk and throttle_warmup must be multiples of 512");
	f = filp_open(dev_path(throttle_dev, path, sizeof(path)), O_RDONLY | O_DIRECT | O_LARGEFILE, 0);
	if (IS_ERR(f))
		return fail("dev=%s open err=%ld", throttle_dev, PTR_ERR(f));
	pages = alloc_pages(GFP_KERNEL, order);
	while (pages && pos < end) {
		if (pos >= throttle_warmup && !t0)
			t0 = ktime_get_ns();
		stop = pos < throttle_warmup ? throttle_warmup : end;
		/* kernel_read() would make an ITER_KVEC, which direct I/O refuses: use a bvec */
		bvec_set_page(&bv, pages, min_t(loff_t, throttle_chunk, stop - pos), 0);
		iov_iter_bvec(&it, ITER_DEST, &bv, 1, bv.bv_len);
		n = vfs_iter_read(f, &it, &pos, 0);
		if (n <= 0)
			break;
	}
	ns = ktime_get_ns() - t0;
	if (pages)
		__free_pages(pages, order);
	fput(f);
	if (!pages)
		return fail("no memory");
	if (pos < end)
		return fail("dev=%s read=%lld of %lld err=%zd", throttle_dev, pos, end, n);
	return ok("dev=%s bytes=%lu ns=%llu warmup=%lu", throttle_dev, throttle_bytes, ns,
		  throttle_warmup);
}

static int __init sock_open(int family, int type, int proto, struct socket **s)
{
	int err = sock_create_kern(&init_net, family, type, proto, s);

	if (!err)
		(*s)->sk->sk_rcvtimeo = (*s)->sk->sk_sndtimeo = timeout * HZ;
	return err;
}

static int __init sock_send(struct socket *s, void *addr, int alen, const void *buf, size_t len)
{
	struct msghdr m = { .msg_name = addr, .msg_namelen = alen };
	struct kvec v = { .iov_base = (void *)buf, .iov_len = len };

	return kernel_sendmsg(s, &m, &v, 1, len);
}

static int __init sock_recv(struct socket *s, void *buf, size_t len)
{
	struct msghdr m = {};
	struct kvec v = { .iov_base = buf, .iov_len = len };

	return kernel_recvmsg(s, &m, &v, 1, len, 0);
}

/* On a connected stream: send `msg`, read until as many bytes came back, compare. */
static int __init stream_echo(struct socket *s, const char *what, const char *msg)
{
	int len = strlen(msg), got = 0, n;
	char echo[64];

	n = sock_send(s, NULL, 0, msg, len);
	if (n != len)
		return fail("%s send=%d", what, n);
	while (got < len) {
		n = sock_recv(s, echo + got, len - got);
		if (n <= 0)
			return fail("%s recv=%d after %d of %d bytes", what, n, got, len);
		got += n;
	}
	if (memcmp(echo, msg, len))
		return fail("%s echo differs", what);
	return ok("%s echo=%d", what, len);
}

static int __init host_addr(struct sockaddr_in *a, ushort port)
{
	if (!host || !port)
		return -EINVAL;
	*a = (struct sockaddr_in){ .sin_family = AF_INET, .sin_port = htons(port),
				   .sin_addr.s_addr = in_aton(host) };
	return 0;
}

static int __init check_udp(void)
{
	char msg[] = "nodesvc-agent udp", echo[64];
	struct sockaddr_in a;
	struct socket *s;
	int err, n = -EAGAIN, try;

	if (host_addr(&a, udp_port))
		return fail("needs nodesvc_agent.host and .udp_port");
	err = sock_open(AF_INET, SOCK_DGRAM, IPPROTO_UDP, &s);
	if (err)
		return fail("socket err=%d", err);
	s->sk->sk_rcvtimeo = 2 * HZ;	/* a lost datagram is sent again */
	for (try = 1; try <= 5 && n < 0; try++) {
		n = sock_send(s, &a, sizeof(a), msg, strlen(msg));
		if (n >= 0)
			n = sock_recv(s, echo, sizeof(echo));
	}
	sock_release(s);
	if (n != strlen(msg) || memcmp(echo, msg, n))
		return fail("to %s:%u recv=%d tries=%d", host, udp_port, n, try - 1);
	return ok("to %s:%u echo=%d tries=%d", host, udp_port, n, try - 1);
}

/* Connect a stream socket to `a`, send `msg`, read it back. */
static int __init connect_echo(int family, int proto, void *a, int alen, const char *what,
			       const char *msg)
{
	struct socket *s;
	int err = sock_open(family, SOCK_STREAM, proto, &s);

	if (err)
		return fail("%s socket err=%d", what, err);
	if (family == AF_VSOCK)
		vsock_sk(s->sk)->connect_timeout = timeout * HZ;
	err = kernel_connect(s, a, alen, 0);
	err = err ? fail("%s connect err=%d", what, err) : stream_echo(s, what, msg);
	sock_release(s);
	return err;
}

static int __init check_tcp(void)
{
	struct sockaddr_in a;

	if (host_addr(&a, tcp_port))
		return fail("needs nodesvc_agent.host and .tcp_port");
	return connect_echo(AF_INET, IPPROTO_TCP, &a, sizeof(a), "tcp", "nodesvc-agent tcp\n");
}

static int __init check_vsock_connect(void)
{
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST,
				 .svm_port = vsock_port };

	if (!vsock_port)
		return fail("needs nodesvc_agent.vsock_port");
	return connect_echo(AF_VSOCK, 0, &a, sizeof(a), "vsock", "nodesvc-agent vsock\n");
}

/* Accept one host-initiated stream (`CONNECT <port>` on uds_path), echo a line, await EOF. */
static int __init check_vsock_listen(void)
{
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
				 .svm_port = listen_port };
	struct socket *s, *c = NULL;
	int err, n, got = 0;
	char line[64];

	if (!listen_port)
		return fail("needs nodesvc_agent.listen_port");
	err = sock_open(AF_VSOCK, SOCK_STREAM, 0, &s);
	if (err)
		return fail("socket err=%d", err);
	err = kernel_bind(s, (struct sockaddr *)&a, sizeof(a)) ?: kernel_listen(s, 1);
	if (!err) {
		pr_info("AGENT vsock-listen READY %u\n", listen_port);
		err = kernel_accept(s, &c, 0);	/* bounded by the listener's rcvtimeo */
	}
	if (err) {
		sock_release(s);
		return fail("port=%u listen/accept err=%d", listen_port, err);
	}
	c->sk->sk_rcvtimeo = c->sk->sk_sndtimeo = timeout * HZ;
	while (got < sizeof(line) && (!got || line[got - 1] != '\n')) {
		n = sock_recv(c, line + got, sizeof(line) - got);
		if (n <= 0)
			break;
		got += n;
	}
	n = got ? sock_send(c, NULL, 0, line, got) : 0;
	/* Guest vsock TX is asynchronous (a workqueue): only the host's close after reading
	 * the echo proves it left the guest before we restart. */
	err = n == got ? sock_recv(c, line, sizeof(line)) : 0;
	sock_release(c);
	sock_release(s);
	if (!got || n != got || err)
		return fail("port=%u read=%d echoed=%d eof=%d", listen_port, got, n, err);
	return ok("port=%u echo=%d", listen_port, got);
}

/* The guest kernel answers ICMP echo by itself: just give the host time to ping. */
static int __init check_ping_wait(void)
{
	pr_info("AGENT ping-wait READY %u\n", ping_wait);
	msleep(ping_wait * 1000);
	return ok("waited=%us", ping_wait);
}

static int __init check_rng(void)
{
	struct file *f = filp_open(DEV_DIR "/hwrng", O_RDONLY, 0);
	loff_t pos = 0;
	ssize_t n = 0;
	size_t got = 0;
	u8 *buf;

	if (IS_ERR(f))
		return fail("open hwrng err=%ld", PTR_ERR(f));
	buf = kmalloc(rng_bytes, GFP_KERNEL);
	while (buf && got < rng_bytes) {
		n = kernel_read(f, buf + got, rng_bytes - got, &pos);
		if (n <= 0)
			break;
		got += n;
	}
	kfree(buf);
	fput(f);
	if (got < rng_bytes)
		return fail("read %zu of %u bytes err=%zd", got, rng_bytes, n);
	return ok("bytes=%zu", got);
}

static int __init check_boot_timer(void)
{
	void __iomem *p = ioremap(BOOT_TIMER_ADDR, PAGE_SIZE);

	if (!p)
		return fail("ioremap %#lx failed", BOOT_TIMER_ADDR);
	writeb(BOOT_TIMER_MAGIC, p);
	iounmap(p);
	return ok("addr=%#lx value=%d", BOOT_TIMER_ADDR, BOOT_TIMER_MAGIC);
}

/* --- mmds: Firecracker's MMDS V2 session flow, on one keep-alive TCP connection ------ */

static char http_buf[1024] __initdata;

/*
 * Send `req`, read one response framed by its Content-Length: HTTP status, or < 0.
 * The body (NUL-terminated, cut to `blen`) goes to `body`, its full length to `*len`.
 */
static int __init http_exchange(struct socket *s, const char *req, char *body, int blen,
				int *len)
{
	int got = 0, n, hdr = 0, clen = -1, status;
	char *end = NULL, *p;

	n = sock_send(s, NULL, 0, req, strlen(req));
	if (n != strlen(req))
		return n < 0 ? n : -EIO;
	while (!end || got < hdr + clen) {
		if (got >= sizeof(http_buf) - 1)
			return -EMSGSIZE;
		n = sock_recv(s, http_buf + got, sizeof(http_buf) - 1 - got);
		if (n <= 0)
			return n < 0 ? n : -ECONNRESET;
		got += n;
		http_buf[got] = '\0';
		if (end)
			continue;
		end = strstr(http_buf, "\r\n\r\n");
		if (!end)
			continue;
		hdr = end + 4 - http_buf;
		for (p = http_buf; p && p < end; p = strstr(p, "\r\n"), p = p ? p + 2 : NULL)
			if (!strncasecmp(p, "content-length:", 15))
				clen = simple_strtol(skip_spaces(p + 15), NULL, 10);
		if (clen < 0)
			return -EPROTO;	/* MMDS always sends Content-Length */
	}
	if (strncmp(http_buf, "HTTP/1.", 7) || http_buf[8] != ' ')
		return -EPROTO;
	status = simple_strtol(http_buf + 9, NULL, 10);
	*len = clen;
	n = min(clen, blen - 1);
	memcpy(body, http_buf + hdr, n);
	body[n] = '\0';
	return status;
}

/* PUT a token (TTL header), GET without it (401), GET with it (200, the test's value). */
static int __init check_mmds(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(80),
				 .sin_addr.s_addr = in_aton(mmds_addr) };
	char req[256], token[80], body[128];
	int err, st, noauth = 0, len = 0, tlen = 0;
	struct socket *s;
	u32 crc;

	err = sock_open(AF_INET, SOCK_STREAM, IPPROTO_TCP, &s);
	if (err)
		return fail("socket err=%d", err);
	err = kernel_connect(s, (struct sockaddr *)&a, sizeof(a), 0);
	if (err) {
		err = fail("connect %s:80 err=%d", mmds_addr, err);
		goto out;
	}
	snprintf(req, sizeof(req), "PUT /latest/api/token HTTP/1.1\r\nHost: %s\r\n"
		 "X-metadata-token-ttl-seconds: %u\r\n\r\n", mmds_addr, mmds_ttl);
	st = http_exchange(s, req, token, sizeof(token), &tlen);
	if (st != 200 || !tlen || tlen >= sizeof(token)) {
		err = fail("token status=%d len=%d", st, tlen);
		goto out;
	}
	snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", mmds_path, mmds_addr);
	noauth = http_exchange(s, req, body, sizeof(body), &len);
	if (noauth != 401) {
		err = fail("token=%d noauth=%d (want 401)", tlen, noauth);
		goto out;
	}
	snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\nX-metadata-token: %s\r\n\r\n",
		 mmds_path, mmds_addr, token);
	st = http_exchange(s, req, body, sizeof(body), &len);
	crc = crc32_le(~0U, body, min_t(int, len, sizeof(body) - 1)) ^ ~0U;
	if (st != 200)
		err = fail("token=%d noauth=%d status=%d", tlen, noauth, st);
	else if (mmds_expect && strcmp(body, mmds_expect))
		err = fail("token=%d noauth=%d status=%d len=%d body differs", tlen, noauth, st, len);
	else
		err = ok("token=%d noauth=%d status=%d len=%d crc32=%08x", tlen, noauth, st, len,
			 crc);
out:
	sock_release(s);
	return err;
}

/* --- wait-go: park with every device up until the host says go (snapshot point) ------- */

static struct timer_list watchdog_timer;

/*
 * Listens on vsock `go_port`, prints READY and blocks in accept (up to go_wait s in all)
 * until the host connects and sends a line; answers `GO` and waits for the host's close.
 * A snapshot taken while it waits restores to a guest whose only vsock socket is this
 * listener, which survives the restore's transport reset; a stream that the reset cuts
 * (it may race the host's first CONNECT) is dropped and the next one accepted. The
 * watchdog's deadline counts again from go.
 */
static int __init check_wait_go(void)
{
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
				 .svm_port = go_port };
	u64 t0 = ktime_get_ns(), end = t0 + (u64)go_wait * NSEC_PER_SEC;
	struct socket *s, *c;
	int err, n, got, tries = 0;
	char line[32];

	if (!go_port)
		return fail("needs nodesvc_agent.go_port");
	err = sock_open(AF_VSOCK, SOCK_STREAM, 0, &s);
	if (err)
		return fail("socket err=%d", err);
	err = kernel_bind(s, (struct sockaddr *)&a, sizeof(a)) ?: kernel_listen(s, 1);
	if (!err)
		pr_info("AGENT wait-go READY %u\n", go_port);
	for (got = 0; !err && !got; tries++) {
		u64 now = ktime_get_ns();

		if (now >= end) {
			err = -ETIMEDOUT;
			break;
		}
		s->sk->sk_rcvtimeo = nsecs_to_jiffies(end - now) + 1;
		err = kernel_accept(s, &c, 0);
		if (err)
			break;
		c->sk->sk_rcvtimeo = c->sk->sk_sndtimeo = timeout * HZ;
		while (got < sizeof(line) && (!got || line[got - 1] != '\n')) {
			n = sock_recv(c, line + got, sizeof(line) - got);
			if (n <= 0)
				break;
			got += n;
		}
		if (got && line[got - 1] == '\n' && sock_send(c, NULL, 0, "GO\n", 3) == 3)
			sock_recv(c, line, sizeof(line));	/* the host closes once it read GO */
		else
			got = 0;	/* reset or cut short: accept the next one */
		sock_release(c);
	}
	sock_release(s);
	mod_timer(&watchdog_timer, jiffies + deadline * HZ);
	if (err)
		return fail("port=%u listen/accept err=%d tries=%d", go_port, err, tries);
	return ok("port=%u waited_ms=%llu tries=%d", go_port,
		  (ktime_get_ns() - t0) / NSEC_PER_MSEC, tries);
}

static const struct {
	const char *name;
	int (*run)(void);
} table[] __initconst = {
	{ "blk-read", check_blk_read },
	{ "blk-write", check_blk_write },
	{ "ext4", check_ext4 },
	{ "blk-throttle", check_blk_throttle },
	{ "udp", check_udp },
	{ "tcp", check_tcp },
	{ "ping-wait", check_ping_wait },
	{ "vsock-connect", check_vsock_connect },
	{ "vsock-listen", check_vsock_listen },
	{ "rng", check_rng },
	{ "boot-timer", check_boot_timer },
	{ "mmds", check_mmds },
	{ "wait-go", check_wait_go },
};

static void __init run_check(const char *name)
{
	int i, err;

	for (i = 0; i < ARRAY_SIZE(table) && strcmp(table[i].name, name); i++)
		;
	if (i == ARRAY_SIZE(table)) {
		pr_info("AGENT %s FAIL unknown check\n", name);
		return;
	}
	current_check = table[i].name;
	detail[0] = '\0';
	err = table[i].run();
	pr_info("AGENT %s %s %s\n", name, err ? "FAIL" : "OK", detail);
}

/*
 * Never hang the VM: after `deadline` seconds name the stuck check and restart.
 * A timer, not a kthread: a kthread that exits runs `fwait` (fpu__drop), which the
 * nested-KVM hosts cannot emulate (the VM would end in an emulation failure).
 */
static void watchdog(struct timer_list *unused)
{
	pr_info("AGENT %s FAIL watchdog: no result within %us\n", current_check, deadline);
	pr_info("AGENT DONE\n");
	emergency_restart();
}

static int __init nodesvc_agent(void)
{
	char *list, *name;
	int err;

	if (!checks || !*checks)
		return 0;	/* dormant: the default guest boots on to /init */
	pr_info("AGENT START %s\n", checks);
	timer_setup(&watchdog_timer, watchdog, 0);
	mod_timer(&watchdog_timer, jiffies + deadline * HZ);
	init_mkdir(DEV_DIR, 0755);
	err = init_mount("devtmpfs", DEV_DIR, "devtmpfs", 0, NULL);
	if (err)
		pr_info("AGENT devtmpfs FAIL mount err=%d\n", err);
	list = kstrdup(checks, GFP_KERNEL);	/* strsep() cuts it up; freed by the restart */
	while (list && (name = strsep(&list, ",")) != NULL)
		if (*name)
			run_check(name);
	del_timer_sync(&watchdog_timer);
	pr_info("AGENT DONE\n");
	kernel_restart(NULL);
	return 0;
}
late_initcall_sync(nodesvc_agent);
