/*
 * stress: the C side of libburrow's tests. With a client home paired with
 * DEVICE (an echo service "echo", a web service "http"):
 *
 *   stress HOME DEVICE concurrent   50 threads dial at once, each checks its own data
 *   stress HOME DEVICE misuse       every misuse returns -1 with a message
 *   stress HOME DEVICE forward      a forward carries a connection, and stops when closed
 *   stress HOME DEVICE cycles N W   N dial/close cycles; RSS and open fds after W and at the end
 *
 * It prints what it checked and exits 0, or says what failed and exits 1.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "burrow.h"

static const char *device;
static int client;

static void die(const char *fmt, const char *arg, int h) {
	char msg[1024] = "";
	if (h >= 0)
		burrow_errmsg(h, msg, sizeof msg);
	fprintf(stderr, "stress: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, ": %s\n", msg);
	exit(1);
}

static int send_all(int fd, const unsigned char *buf, size_t len) {
	while (len > 0) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* echo sends len bytes of a pattern seeded by seed, half-closes, and
 * checks that exactly those bytes come back before end of stream. */
static int echo(int fd, unsigned seed, size_t len) {
	unsigned char *out = malloc(len), *in = malloc(len + 1);
	for (size_t i = 0; i < len; i++)
		out[i] = (unsigned char)((i * 131 + seed * 7919) >> 3);
	int ok = send_all(fd, out, len) == 0 && shutdown(fd, SHUT_WR) == 0;
	size_t got = 0;
	while (ok) {
		ssize_t n = read(fd, in + got, len + 1 - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			ok = n == 0;
			break;
		}
		got += (size_t)n;
		if (got > len)
			ok = 0;
	}
	ok = ok && got == len && memcmp(in, out, len) == 0;
	free(out);
	free(in);
	return ok ? 0 : -1;
}

static void *dial_thread(void *arg) {
	unsigned i = (unsigned)(size_t)arg;
	int fd;
	if (burrow_dial(client, device, "echo", &fd) < 0) {
		char msg[1024];
		burrow_errmsg(client, msg, sizeof msg);
		fprintf(stderr, "stress: thread %u: dial: %s\n", i, msg);
		return (void *)1;
	}
	int bad = echo(fd, i, 64 << 10 | i);
	close(fd);
	if (bad)
		fprintf(stderr, "stress: thread %u: the echoed data differ\n", i);
	return (void *)(size_t)(bad != 0);
}

static int concurrent(void) {
	enum { threads = 50 };
	pthread_t th[threads];
	for (size_t i = 0; i < threads; i++)
		if (pthread_create(&th[i], NULL, dial_thread, (void *)i) != 0)
			die("pthread_create%s", "", -1);
	int failed = 0;
	for (int i = 0; i < threads; i++) {
		void *r;
		pthread_join(th[i], &r);
		failed += r != NULL;
	}
	if (failed)
		return 1;
	printf("concurrent: %d dials, all data correct\n", threads);
	return 0;
}

/* misused checks that a call returned -1 and left a message on h. */
static int misused(const char *what, int ret, int h) {
	char msg[1024];
	int n = burrow_errmsg(h, msg, sizeof msg);
	if (ret != -1 || n <= 0) {
		fprintf(stderr, "stress: %s: returned %d, message length %d\n", what, ret, n);
		return 1;
	}
	printf("%s: %s\n", what, msg);
	return 0;
}

static int misuse(const char *home) {
	int fd = -1, bad = 0;
	char addr[64], small[8];
	bad += misused("client_new on a file", burrow_client_new("/proc/version"), 0);
	bad += misused("dial NULL device", burrow_dial(client, NULL, "http", &fd), client);
	bad += misused("dial NULL service", burrow_dial(client, device, NULL, &fd), client);
	bad += misused("dial NULL conn_fd", burrow_dial(client, device, "http", NULL), client);
	bad += misused("dial unknown device", burrow_dial(client, "nosuch", "http", &fd), client);
	bad += misused("dial unknown service", burrow_dial(client, device, "nosuch", &fd), client);
	bad += misused("dial invalid service", burrow_dial(client, device, "a b", &fd), client);
	bad += misused("pair NULL invite", burrow_pair(client, NULL, NULL), client);
	bad += misused("pair bad invite", burrow_pair(client, "burrow://pair?nonsense", NULL), client);
	bad += misused("forward small buffer", burrow_forward(client, device, "http", NULL, small, sizeof small), client);
	bad += misused("forward NULL buffer", burrow_forward(client, device, "http", NULL, NULL, 0), client);
	bad += misused("forward bad address", burrow_forward(client, device, "http", "not an address", addr, sizeof addr), client);
	bad += misused("client_lan once started", burrow_client_lan(client, 1), client);
	bad += misused("dial handle 0", burrow_dial(0, device, "http", &fd), 0);
	bad += misused("dial negative handle", burrow_dial(-3, device, "http", &fd), 0);
	bad += misused("close unknown handle", burrow_close(987654), 0);
	if (burrow_errmsg(987654, addr, sizeof addr) != -1 || burrow_errmsg(0, NULL, 10) != -1 || burrow_errmsg(0, addr, 0) != -1) {
		fprintf(stderr, "stress: errmsg of an unknown handle or into no buffer did not return -1\n");
		bad++;
	}
	/* errmsg's own failures keep no message: handle 0's is still close's. */
	burrow_close(987654);
	burrow_errmsg(987655, addr, sizeof addr);
	char zero[512];
	if (burrow_errmsg(0, zero, sizeof zero) <= 0 || strstr(zero, "987654") == NULL) {
		fprintf(stderr, "stress: a failed errmsg replaced handle 0's message with: %s\n", zero);
		bad++;
	}
	/* A long message is cut to fit, and its full length returned. */
	burrow_dial(client, "nosuch", "http", &fd);
	int n = burrow_errmsg(client, small, sizeof small);
	if (n < (int)sizeof small || strlen(small) != sizeof small - 1) {
		fprintf(stderr, "stress: errmsg into 8 bytes returned %d and %zu bytes\n", n, strlen(small));
		bad++;
	}
	/* A forward handle is not a client. */
	int fw = burrow_forward(client, device, "http", "127.0.0.1:0", addr, sizeof addr);
	if (fw < 0)
		die("forward%s", "", client);
	bad += misused("dial on a forward handle", burrow_dial(fw, device, "http", &fd), 0);
	/* Closed handles: a second close, and every call on a closed client. */
	int other = burrow_client_new(home);
	if (other < 0)
		die("client_new%s", "", 0);
	if (burrow_close(other) != 0)
		die("close%s", "", 0);
	bad += misused("close closed client", burrow_close(other), 0);
	bad += misused("dial closed client", burrow_dial(other, device, "http", &fd), 0);
	bad += misused("pair closed client", burrow_pair(other, "x", NULL), 0);
	bad += misused("forward closed client", burrow_forward(other, device, "http", NULL, addr, sizeof addr), 0);
	if (burrow_close(fw) != 0)
		die("close forward%s", "", 0);
	bad += misused("close closed forward", burrow_close(fw), 0);
	if (fd != -1) {
		fprintf(stderr, "stress: a failed dial set conn_fd\n");
		bad++;
	}
	return bad != 0;
}

/* tcp_connect connects to "ip:port". */
static int tcp_connect(const char *addr) {
	char host[64];
	const char *colon = strrchr(addr, ':');
	if (!colon || (size_t)(colon - addr) >= sizeof host)
		return -1;
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = 0;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(colon + 1))};
	inet_pton(AF_INET, host, &sa.sin_addr);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int forward(void) {
	char addr[64];
	int fw = burrow_forward(client, device, "echo", "127.0.0.1:0", addr, sizeof addr);
	if (fw < 0)
		die("forward%s", "", client);
	int fd = tcp_connect(addr);
	if (fd < 0 || echo(fd, 99, 100000) != 0)
		die("echo through the forward at %s", addr, -1);
	close(fd);
	if (burrow_close(fw) != 0)
		die("close the forward%s", "", 0);
	fd = tcp_connect(addr);
	if (fd >= 0)
		die("%s still accepts after the forward closed", addr, -1);
	printf("forward: %s carried a connection, and stopped listening when closed\n", addr);
	return 0;
}

static long rss_kib(void) {
	long size, resident;
	FILE *f = fopen("/proc/self/statm", "r");
	if (!f || fscanf(f, "%ld %ld", &size, &resident) != 2)
		die("read /proc/self/statm%s", "", -1);
	fclose(f);
	return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static int open_fds(void) {
	int n = 0;
	DIR *d = opendir("/proc/self/fd");
	while (readdir(d))
		n++;
	closedir(d);
	return n - 3; /* ., .. and d's own */
}

/* settled_fds waits up to 5s for the open fds to come down to want (the
 * library closes its end of a tunnel just after the app has read its
 * end), and returns how many there are. */
static int settled_fds(int want) {
	int n = open_fds();
	for (int i = 0; i < 500 && n > want; i++) {
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
		n = open_fds();
	}
	return n;
}

static int cycles(int total, int warm) {
	long rss_warm = 0;
	int fds_warm = 0;
	for (int i = 1; i <= total; i++) {
		int fd;
		if (burrow_dial(client, device, "echo", &fd) < 0)
			die("dial%s", "", client);
		if (echo(fd, (unsigned)i, 1000) != 0)
			die("cycle: the echoed data differ%s", "", -1);
		close(fd);
		if (i % 100 == 0)
			fprintf(stderr, "cycle %d: rss %ld KiB, %d fds open\n", i, rss_kib(), open_fds());
		if (i == warm) {
			fds_warm = settled_fds(0);
			rss_warm = rss_kib();
		}
	}
	int fds_end = settled_fds(fds_warm);
	printf("cycles: %d rss_warm_kib=%ld rss_end_kib=%ld fds_warm=%d fds_end=%d\n", total, rss_warm, rss_kib(), fds_warm, fds_end);
	return 0;
}

int main(int argc, char **argv) {
	if (argc < 4) {
		fprintf(stderr, "usage: stress HOME DEVICE concurrent|misuse|forward|cycles N W\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	device = argv[2];
	client = burrow_client_new(argv[1]);
	if (client < 0)
		die("client_new %s", argv[1], 0);
	/* The relay and the device are on loopback: ask no LAN. */
	if (burrow_client_lan(client, 0) < 0)
		die("client_lan%s", "", client);
	const char *mode = argv[3];
	int r;
	if (strcmp(mode, "concurrent") == 0)
		r = concurrent();
	else if (strcmp(mode, "misuse") == 0)
		r = misuse(argv[1]);
	else if (strcmp(mode, "forward") == 0)
		r = forward();
	else if (strcmp(mode, "cycles") == 0 && argc == 6)
		r = cycles(atoi(argv[4]), atoi(argv[5]));
	else
		die("unknown mode %s", mode, -1);
	if (burrow_close(client) != 0)
		die("close the client%s", "", 0);
	return r;
}
