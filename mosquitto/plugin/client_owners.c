/*
 * client_owners: a Mosquitto 2.0 plugin (API v5) that binds client ids to users.
 *
 * Mosquitto finds a session by client id alone: any user with a valid password
 * who connects with another client's id takes over that client's session (the
 * old connection is closed and, with clean start, its queued messages are
 * dropped; src/handle_connect.c, connect__on_authorised). Nothing built in ties
 * a client id to a user: dynamic-security ties a user to one client id, not a
 * client id to its user. This plugin does, from a file that
 * mosquitto/docker-entrypoint.sh writes at every start:
 *
 *     owner <user> <client id pattern>   client ids matching the pattern belong
 *                                        to <user>; '*' matches any run of
 *                                        characters, nothing else is special
 *     readonly <user>                    <user> may publish nothing
 *     # comment
 *
 * At CONNECT (MOSQ_EVT_BASIC_AUTH) it refuses
 *   - a client id that belongs to another user (or to no-one but matches a rule
 *     of another user), and
 *   - a user that owns client ids connecting with one it does not own;
 * otherwise it defers, and the password file decides. Mosquitto runs a
 * plugin's callbacks before those of password_file and acl_file (plugins are
 * initialised in mosquitto_security_module_init, the files' callbacks are
 * appended after them in mosquitto_security_init_default, also on reload), and
 * the first answer that is not "defer" wins; this plugin never grants, it only
 * refuses or defers. A refused CONNECT never reaches connect__on_authorised, so
 * the session that owns the id stays connected and keeps its queue.
 *
 * MQTT 5 enhanced authentication (a CONNECT with an authentication method)
 * never reaches MOSQ_EVT_BASIC_AUTH; no plugin here offers it, so the broker
 * refuses such a CONNECT (reason 140). A plugin that adds it must check
 * ownership too.
 *
 * On publish (MOSQ_EVT_ACL_CHECK, MOSQ_ACL_WRITE) it refuses every message of
 * a readonly user; everything else defers to acl_file.
 *
 * It fails closed: a missing or malformed file stops the broker at start, and
 * if it cannot be read again on reload (SIGHUP) every login and publish is
 * refused until it can.
 *
 * Config:  plugin /path/to/mosquitto_client_owners.so
 *          plugin_opt_owners_file /path/to/owners
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define LINE_MAX_LEN 1024

struct rule {
	char *user;
	char *pattern;
};

struct table {
	struct rule *owners;
	size_t owner_count;
	char **readonly;
	size_t readonly_count;
};

static mosquitto_plugin_id_t *plugin_id;
static char *owners_file;
static struct table table;
static bool loaded; /* false: refuse everything (fail closed) */

/* Whether text matches pattern, where '*' matches any run of characters (also none). */
static bool glob_match(const char *pattern, const char *text)
{
	const char *star = NULL, *resume = NULL;

	while(*text){
		if(*pattern == '*'){
			star = pattern++;
			resume = text;
		}else if(*pattern == *text){
			pattern++;
			text++;
		}else if(star){
			pattern = star + 1;
			text = ++resume;
		}else{
			return false;
		}
	}
	while(*pattern == '*') pattern++;
	return *pattern == '\0';
}

static void table_free(struct table *t)
{
	size_t i;

	for(i = 0; i < t->owner_count; i++){
		free(t->owners[i].user);
		free(t->owners[i].pattern);
	}
	for(i = 0; i < t->readonly_count; i++) free(t->readonly[i]);
	free(t->owners);
	free(t->readonly);
	memset(t, 0, sizeof(*t));
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

/* Reads the file into *out; on any error logs it, leaves *out empty and returns false. */
static bool table_load(const char *path, struct table *out)
{
	FILE *f;
	char line[LINE_MAX_LEN];
	unsigned lineno = 0;
	struct table t = {0};
	bool ok = true;

	f = fopen(path, "r");
	if(!f){
		mosquitto_log_printf(MOSQ_LOG_ERR, "client_owners: cannot open %s: %s", path, strerror(errno));
		return false;
	}
	while(ok && fgets(line, sizeof(line), f)){
		char *kind, *user, *pattern, *extra, *save = NULL;

		lineno++;
		if(!strchr(line, '\n') && !feof(f)){
			mosquitto_log_printf(MOSQ_LOG_ERR, "client_owners: %s:%u: line too long", path, lineno);
			ok = false;
			break;
		}
		kind = strtok_r(line, " \t\r\n", &save);
		if(!kind || kind[0] == '#') continue;
		user = strtok_r(NULL, " \t\r\n", &save);
		pattern = strtok_r(NULL, " \t\r\n", &save);
		extra = strtok_r(NULL, " \t\r\n", &save);

		if(!strcmp(kind, "owner") && user && pattern && !extra){
			struct rule *grown = realloc(t.owners, (t.owner_count + 1) * sizeof(*grown));
			if(!grown){ ok = false; break; }
			t.owners = grown;
			t.owners[t.owner_count].user = dup_or_null(user);
			t.owners[t.owner_count].pattern = dup_or_null(pattern);
			t.owner_count++;
			if(!t.owners[t.owner_count - 1].user || !t.owners[t.owner_count - 1].pattern) ok = false;
		}else if(!strcmp(kind, "readonly") && user && !pattern){
			char **grown = realloc(t.readonly, (t.readonly_count + 1) * sizeof(*grown));
			if(!grown){ ok = false; break; }
			t.readonly = grown;
			t.readonly[t.readonly_count++] = dup_or_null(user);
			if(!t.readonly[t.readonly_count - 1]) ok = false;
		}else{
			mosquitto_log_printf(MOSQ_LOG_ERR, "client_owners: %s:%u: expected 'owner <user> <pattern>' or 'readonly <user>'", path, lineno);
			ok = false;
		}
	}
	if(ferror(f)) ok = false;
	fclose(f);
	if(ok && t.owner_count == 0){
		/* The entry point always reserves the bridge's ids: an empty map means a broken file. */
		mosquitto_log_printf(MOSQ_LOG_ERR, "client_owners: %s has no owner line", path);
		ok = false;
	}
	if(!ok){
		table_free(&t);
		return false;
	}
	*out = t;
	return true;
}

static bool is_readonly(const char *user)
{
	size_t i;

	if(!user) return false;
	for(i = 0; i < table.readonly_count; i++){
		if(!strcmp(table.readonly[i], user)) return true;
	}
	return false;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *id = mosquitto_client_id(ed->client);
	const char *user = ed->username;
	bool owns_some = false, owns_this = false;
	size_t i;

	(void)event;
	(void)userdata;
	if(!loaded || !id) return MOSQ_ERR_AUTH;

	for(i = 0; i < table.owner_count; i++){
		bool mine = user && !strcmp(table.owners[i].user, user);

		if(glob_match(table.owners[i].pattern, id)){
			if(!mine){
				mosquitto_log_printf(MOSQ_LOG_NOTICE,
						"client_owners: refused client id '%s' for user '%s': it belongs to '%s'",
						id, user ? user : "(anonymous)", table.owners[i].user);
				return MOSQ_ERR_AUTH;
			}
			owns_this = true;
		}
		if(mine) owns_some = true;
	}
	if(owns_some && !owns_this){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"client_owners: refused client id '%s' for user '%s': that user may use only its own client ids",
				id, user);
		return MOSQ_ERR_AUTH;
	}
	return MOSQ_ERR_PLUGIN_DEFER;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;

	(void)event;
	(void)userdata;
	if(!loaded) return MOSQ_ERR_ACL_DENIED;
	if(ed->access == MOSQ_ACL_WRITE && is_readonly(mosquitto_client_username(ed->client))){
		return MOSQ_ERR_ACL_DENIED;
	}
	return MOSQ_ERR_PLUGIN_DEFER;
}

static int on_reload(int event, void *event_data, void *userdata)
{
	struct table fresh;

	(void)event;
	(void)event_data;
	(void)userdata;
	table_free(&table);
	loaded = table_load(owners_file, &fresh);
	if(loaded){
		table = fresh;
	}else{
		mosquitto_log_printf(MOSQ_LOG_ERR, "client_owners: refusing every client until %s can be read", owners_file);
	}
	return MOSQ_ERR_PLUGIN_DEFER; /* let other plugins reload too */
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;

	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options, int option_count)
{
	int i;

	(void)userdata;
	plugin_id = identifier;
	for(i = 0; i < option_count; i++){
		if(!strcmp(options[i].key, "owners_file")) owners_file = strdup(options[i].value);
	}
	if(!owners_file){
		mosquitto_log_printf(MOSQ_LOG_ERR, "client_owners: set plugin_opt_owners_file");
		return MOSQ_ERR_INVAL;
	}
	loaded = table_load(owners_file, &table);
	if(!loaded) return MOSQ_ERR_INVAL; /* the broker does not start */

	if(mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL, NULL)){
		return MOSQ_ERR_UNKNOWN;
	}
	mosquitto_log_printf(MOSQ_LOG_INFO, "client_owners: %zu owner rule(s), %zu read-only user(s) from %s",
			table.owner_count, table.readonly_count, owners_file);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL);
	table_free(&table);
	free(owners_file);
	owners_file = NULL;
	loaded = false;
	return MOSQ_ERR_SUCCESS;
}
