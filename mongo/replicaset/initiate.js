// Initiates the replica set rs0 of docker-compose.replicaset.yml and makes sure
// the application user exists: run by the one-shot `mongo-rs-init` service
// (mongosh --nodb) after the three members answer, on every `up`. Idempotent:
// a set that is already initiated is left as it is, and so is an existing user.
//
// It logs in as root (MONGO_INITDB_ROOT_USERNAME/PASSWORD, from .env) read from
// the environment, so no password is on a command line. The user came from
// the first member's init scripts (mongo/10-create-app-user.js) when its
// volume was new; the members mongo2 and mongo3 start empty and copy it (and
// everything else) from the primary.

const SET = "rs0";
const MEMBERS = ["mongo:27017", "mongo2:27017", "mongo3:27017"];
const PRIMARY_WAIT_MS = 120 * 1000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: the replica set cannot be initiated`);
  }
  return value;
}

// A command's answer: the Node driver under mongosh throws on {ok: 0}; this returns it, as the server sent it.
function command(database, document) {
  try {
    return database.runCommand(document);
  } catch (error) {
    if (error.code === undefined) {
      throw error;
    }
    return { ok: 0, code: error.code, codeName: error.codeName, errmsg: error.message };
  }
}

function login(uri) {
  const admin = new Mongo(uri).getDB("admin");
  try {
    admin.auth(required("MONGO_INITDB_ROOT_USERNAME"), required("MONGO_INITDB_ROOT_PASSWORD"));
  } catch (error) {
    if (String(error).includes("Authentication failed")) {
      print(
        "MongoDB refuses MONGO_ROOT_USERNAME/MONGO_ROOT_PASSWORD from .env: the mongo-data volume " +
          "was initialised with another .env. Put that .env back, or delete all the stack's data " +
          "with docker compose down -v (README: Troubleshooting).",
      );
    }
    throw error;
  }
  return admin;
}

// The first member, directly: the set has no primary to route to before it is initiated.
const first = login(`mongodb://${MEMBERS[0]}/?directConnection=true`);
const status = command(first, { replSetGetStatus: 1 });
if (status.ok) {
  print(`replica set ${status.set} is already initiated (${status.members.length} members)`);
  if (status.set !== SET) {
    throw new Error(`the first member belongs to replica set ${status.set}, not ${SET}`);
  }
} else if (status.code === 94 /* NotYetInitialized */) {
  // The first member has the data (the users from its init scripts) and the
  // higher priority, so it becomes primary; the others must be empty.
  const config = {
    _id: SET,
    members: MEMBERS.map((host, index) => ({ _id: index, host, priority: index === 0 ? 2 : 1 })),
  };
  const answer = command(first, { replSetInitiate: config });
  if (!answer.ok) {
    throw new Error(`replSetInitiate failed: ${answer.codeName}: ${answer.errmsg}`);
  }
  print(`initiated replica set ${SET} with ${MEMBERS.join(", ")}`);
} else {
  throw new Error(`replSetGetStatus failed: ${status.codeName}: ${status.errmsg}`);
}

// Wait for a primary, through the set as the services reach it.
const deadline = Date.now() + PRIMARY_WAIT_MS;
let primary = null;
while (!primary) {
  try {
    primary = command(first, { hello: 1 }).primary || null;
  } catch (error) {
    print(`waiting for a primary: ${error}`);
  }
  if (!primary) {
    if (Date.now() > deadline) {
      throw new Error(`no primary in replica set ${SET} after ${PRIMARY_WAIT_MS / 1000}s`);
    }
    sleep(1000);
  }
}
print(`primary: ${primary}`);

db = login(`mongodb://${MEMBERS.join(",")}/?replicaSet=${SET}`);
load("/docker-entrypoint-initdb.d/10-create-app-user.js");
