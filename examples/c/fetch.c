/*
 * fetch: pair with a device and fetch a web page from one of its
 * services through burrow, with libburrow.
 *
 *   fetch HOME INVITE DEVICE SERVICE [PATH]
 *
 * HOME is the client's home directory (its key and paired devices).
 * INVITE is an invite from the device's owner ("burrow device invite");
 * the device is saved as DEVICE. An INVITE of "-" skips pairing: DEVICE
 * is then a device paired before. The page at PATH (default /) of the
 * HTTP service SERVICE on it is printed on standard output.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "burrow.h"

/* fail prints what failed, with the library's message of handle h. */
static int fail(const char *what, int h) {
	char msg[1024];
	burrow_errmsg(h, msg, sizeof msg);
	fprintf(stderr, "fetch: %s: %s\n", what, msg);
	return 1;
}

/* send_all writes len bytes of buf to fd. */
static int send_all(int fd, const char *buf, size_t len) {
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

int main(int argc, char **argv) {
	if (argc < 5 || argc > 6) {
		fprintf(stderr, "usage: fetch HOME INVITE DEVICE SERVICE [PATH]\n");
		return 2;
	}
	const char *home = argv[1], *invite = argv[2], *device = argv[3], *service = argv[4];
	const char *path = argc == 6 ? argv[5] : "/";
	signal(SIGPIPE, SIG_IGN);

	int client = burrow_client_new(home);
	if (client < 0)
		return fail("open the client home", 0);
	/* The LAN is on by default: a device on this network is reached there
	 * even with the relay down. FETCH_NO_LAN keeps to the relay (the tests
	 * run this next to a relay on loopback, and ask no LAN). */
	if (getenv("FETCH_NO_LAN") != NULL && burrow_client_lan(client, 0) < 0)
		return fail("turn the LAN off", client);
	if (strcmp(invite, "-") != 0 && burrow_pair(client, invite, device) < 0)
		return fail("pair", client);

	int fd;
	if (burrow_dial(client, device, service, &fd) < 0)
		return fail("dial", client);
	char req[1024];
	int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n", path, device);
	if (n < 0 || (size_t)n >= sizeof req || send_all(fd, req, (size_t)n) < 0) {
		perror("fetch: send the request");
		return 1;
	}

	/* Read the whole response: the server closes the connection at its end. */
	size_t len = 0, cap = 64 << 10;
	char *resp = malloc(cap + 1);
	for (;;) {
		if (len == cap) {
			cap *= 2;
			resp = realloc(resp, cap + 1);
		}
		ssize_t r = read(fd, resp + len, cap - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			perror("fetch: read the response");
			return 1;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	resp[len] = 0;
	close(fd);
	burrow_close(client);

	char *body = strstr(resp, "\r\n\r\n");
	if (strncmp(resp, "HTTP/1.", 7) != 0 || body == NULL) {
		fprintf(stderr, "fetch: not an HTTP response (%zu bytes)\n", len);
		return 1;
	}
	if (strncmp(resp + 8, " 200", 4) != 0) {
		fprintf(stderr, "fetch: %.*s\n", (int)strcspn(resp, "\r"), resp);
		return 1;
	}
	body += 4;
	fwrite(body, 1, len - (size_t)(body - resp), stdout);
	free(resp);
	return 0;
}
