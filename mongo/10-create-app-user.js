// Creates the pipeline's application user, run once by the mongo image's
// entry point when the data volume is new (files in /docker-entrypoint-initdb.d
// run only on an empty /data/db; the root user comes from
// MONGO_INITDB_ROOT_USERNAME/PASSWORD).
//
// Least privilege: the services and mongo-express log in as this user, which
// can read and write the pipeline's database (MONGO_DATABASE) and nothing
// else; the root user is for administration only.
//
// Changing MONGO_APP_USERNAME/PASSWORD in .env later does not change the user
// in an existing volume: run db.changeUserPassword() as root, or start over
// with `docker compose down -v` (which deletes the data).

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
db.getSiblingDB(database).createUser({
  user: username,
  pwd: password,
  roles: [{ role: "readWrite", db: database }],
});
print(`created user ${username} with readWrite on ${database}`);
