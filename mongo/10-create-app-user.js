// Creates the pipeline's application user, run once by the mongo image's
// entry point when the data volume is new (files in /docker-entrypoint-initdb.d
// run only on an empty /data/db; the root user comes from
// MONGO_INITDB_ROOT_USERNAME/PASSWORD). The replica set's init service
// (mongo/replicaset/initiate.js, docker-compose.replicaset.yml) loads this same
// file on the set's primary, so it does nothing when the user exists.
//
// Least privilege: the services and mongo-express log in as this user, which
// can read and write the pipeline's database (MONGO_DATABASE) and nothing
// else; the root user is for administration only.
//
// Changing MONGO_APP_USERNAME/PASSWORD in .env later does not change the user
// in an existing volume: run db.changeUserPassword() as root, or start over
// with `docker compose down -v` (which deletes the data).

(function createAppUser() {
  function required(name) {
    const value = process.env[name];
    if (!value) {
      throw new Error(`${name} is not set: the application user cannot be created`);
    }
    return value;
  }

  const database = required("MONGO_DATABASE");
  const username = required("MONGO_APP_USERNAME");
  const password = required("MONGO_APP_PASSWORD");

  // The user lives in the pipeline's database, so clients authenticate with
  // authSource=<MONGO_DATABASE>.
  const target = db.getSiblingDB(database);
  if (target.getUser(username)) {
    print(`user ${username} already exists on ${database}: left as it is`);
    return;
  }
  target.createUser(
    { user: username, pwd: password, roles: [{ role: "readWrite", db: database }] },
    { w: "majority" },
  );
  print(`created user ${username} with readWrite on ${database}`);
})();
