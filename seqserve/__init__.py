"""seqserve: torch-free pieces shared by the server, the client and the batch job."""
