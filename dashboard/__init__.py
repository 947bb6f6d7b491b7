"""The Streamlit dashboard of KCP Rank Explorer: ``streamlit run dashboard/app.py`` from the repository root."""
