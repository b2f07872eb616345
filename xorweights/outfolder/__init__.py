"""The output folder: crash-safe files (`atomic`), the folder's lock, records and journal (`folder`),
free space (`space`), the page cache (`oscache`), and the path rules every input and output meets
(`paths`)."""
