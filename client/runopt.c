/* refpage-run settings; see runopt.h. No malloc, no stdio, no locale:
 * this runs inside malloc. */
#include "runopt.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int runopt_mode(const char *s, enum runopt_mode *out)
{
	static const char *const names[] = { "refpage", "memset", "anon" };

	for (unsigned i = 0; s && i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcmp(s, names[i]) == 0) {
			*out = (enum runopt_mode)i;
			return 0;
		}
	}
	return -1;
}

const char *runopt_mode_name(enum runopt_mode m)
{
	switch (m) {
	case RUNOPT_REFPAGE:
		return "refpage";
	case RUNOPT_MEMSET:
		return "memset";
	case RUNOPT_ANON:
		return "anon";
	}
	return "?";
}

int runopt_backend(const char *s, enum runopt_backend *out)
{
	if (s && (!strcmp(s, "file") || !strcmp(s, "auto")))
		*out = RUNOPT_BACKEND_FILE;
	else if (s && !strcmp(s, "uffd"))
		*out = RUNOPT_BACKEND_UFFD;
	else
		return -1;
	return 0;
}

const char *runopt_backend_name(enum runopt_backend b)
{
	return b == RUNOPT_BACKEND_UFFD ? "uffd" : "file";
}

/* A whole unsigned number (strtoull alone accepts "-1", " 5" and ""). */
static int whole_number(const char *s, int base, unsigned long long *v, char **end)
{
	if (!s || *s < '0' || *s > '9')
		return -1;
	errno = 0;
	*v = strtoull(s, end, base);
	return errno ? -1 : 0;
}

int runopt_format(const char *s, enum runopt_format *out)
{
	if (!strcmp(s, "text"))
		*out = RUNOPT_TEXT;
	else if (!strcmp(s, "json"))
		*out = RUNOPT_JSON;
	else
		return -1;
	return 0;
}

int runopt_pattern(const char *s, uint8_t *out)
{
	unsigned long long v;
	char *end;

	if (whole_number(s, 0, &v, &end) < 0 || *end || v > 255)
		return -1;
	*out = (uint8_t)v;
	return 0;
}

int runopt_threshold(const char *s, size_t *out)
{
	unsigned long long v, unit = 1;
	char *end;

	if (whole_number(s, 10, &v, &end) < 0)
		return -1;
	switch (*end) {
	case '\0':
		break;
	case 'k':
	case 'K':
		unit = 1ull << 10;
		break;
	case 'm':
	case 'M':
		unit = 1ull << 20;
		break;
	case 'g':
	case 'G':
		unit = 1ull << 30;
		break;
	default:
		return -1;
	}
	if (*end && end[1])
		return -1;
	if (v == 0 || v > RUNOPT_MAX_THRESHOLD / unit)
		return -1;
	*out = (size_t)(v * unit);
	return 0;
}

int runopt_bool(const char *s, int *out)
{
	if (s && (s[0] == '0' || s[0] == '1') && !s[1]) {
		*out = s[0] == '1';
		return 0;
	}
	return -1;
}
